"""`HAProxyFront`: the edge's shared HTTP and HTTPS listeners (`ingot.edge.front.Front`) on one haproxy.

One haproxy process, started by the front with a configuration written once and never reloaded
(haproxy 2.6 can create neither frontends nor backends at runtime), so everything that changes lives
in files haproxy reads at start and changes through the runtime API afterwards:

- Routes: one regex map (`routes.map`, `map_reg`: first match in file order wins), replaced whole
  with `prepare map` / `add map @V` / `commit map @V`, so a new table applies atomically. The key
  looked up is `<host without port, lower-case><path>/`; each route becomes `^<host>` + `<path>/`
  (a wildcard `*.example.com` becomes `^[^/]+\\.example\\.com`), so `/api` matches `/api` and `/api/x`
  and not `/apix`. Entries are ordered exact hosts first, then wildcards by longest suffix, and within
  a host by longest path, each host closed by a catch-all that answers 404: the host is chosen
  first, then the path, as the contract says. The value is `<backend>|<redirect 0/1>|<hsts max-age>`.
- Backends: `backends` pre-declared backends `b1`..`bN`, each with `slots` server slots, exactly the
  dedicated router's backend (`routers.haproxy_config.backend_lines`). `router()` binds one backend
  to a router id and returns a `Router` that is the dedicated `HAProxyRouter`'s code on that backend
  (`_FrontRouter`: only the process handling differs), so weights, drains, health and stats mean the
  same on both.
- Certificates: a crt-list (`certs.crtlist`) on the HTTPS bind with `strict-sni`, so a name without a
  certificate fails the handshake; `set_certificate` uses `new/set/commit ssl cert` and
  `add ssl crt-list` (an existing one: `set` and `commit` only; connections stay up), and writes the
  files too, so a haproxy started again after a crash has them. ALPN offers h2 and http/1.1.
- Maintenance: one map (`maint.map`, backend → answer) for every backend; each router sets its own
  backend's entry (`HAProxyRouter.set_maintenance`) and removes it when it stops. The hold
  (`strategy.hold`) likewise: one `hold.map` and its Lua action, an entry per held backend.
- ACME HTTP-01: `challenges` (token → key authorisation) is a map (`acme.map`) that haproxy answers
  from itself (`http-request return`) on plain HTTP for any host, before routing.

Adoption. haproxy outlives the edge; a front started where its haproxy still runs takes it over (the
same checks as the dedicated router: `owner.json`, pidfile, command line, admin socket), reads back what it
holds from the files kept in step with it (routes, challenges, certificates, which router id had which
backend: `backends.json`), and each router reconciles its backend's slots as a dedicated router does.

Not done here (yet): per-router client policies (one policy for the shared frontends), a dedicated
listener per router (`listen`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from ingot.edge.front import Binding
from ingot.errors import OperationFailed
from ingot.routers.base import Address, ClientPolicy, Router
from ingot.routers.haproxy import (
    ADOPT_TIMEOUT,
    STOP_TIMEOUT,
    HAProxyRouter,
    RuntimeAPI,
    _Adopted,
    _kill_group,
    _parent_of,
    counters_of,
    parse_map,
    parse_servers_state,
    parse_stat,
    running_master,
)
from ingot.routers.haproxy_config import (
    Timeouts,
    backend_lines,
    check_map_path,
    client_rules,
    global_and_defaults,
    hold_lua_path,
    is_slot,
    slot_names,
    write_hold_files,
)

log = logging.getLogger("ingot.edge.haproxy_front")

BACKENDS = 32  # routers one front can serve at once (haproxy cannot add a backend without a reload)
SLOTS = 16  # instances per router at once before servers are added that never reuse connections
NOT_FOUND_404 = "404 Not Found: no site here for this host and path"
NO_ROUTE = "404"  # the value of a host's catch-all entry: that host has no route for this path

_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,=:@%/-]*")
_ACME_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,256}")


# ---- the route table (pure) -------------------------------------------------------------------------


def route_entries(bindings: list[Binding], backend_of: dict[str, str]) -> list[tuple[str, str]]:
    """The routes map, in order: (regex key, value); see the module's docstring."""
    by_host: dict[str, dict[str, str]] = {}
    for b in bindings:
        host, path = b.route.host.lower(), b.route.path or "/"
        if not _HOST.fullmatch(host):
            raise ValueError(f"route host {host!r} of {b.name} is not a host name or *.domain")
        if not _PATH.fullmatch(path):
            raise ValueError(f"route path {path!r} of {b.name} must be a URL path starting with /")
        backend = backend_of.get(b.router_id, NO_ROUTE)
        redirect = "1" if b.route.redirect and b.route.tls != "off" and backend != NO_ROUTE else "0"
        hsts = str(b.route.hsts) if b.route.hsts is not None else ""
        by_host.setdefault(host, {})[path.rstrip("/") + "/"] = f"{backend}|{redirect}|{hsts}"

    def order(host: str) -> tuple[int, int]:
        return (1, -len(host)) if host.startswith("*.") else (0, 0)

    entries: list[tuple[str, str]] = []
    for host in sorted(by_host, key=order):
        start = "^[^/]+" + re.escape(host[1:]) if host.startswith("*.") else "^" + re.escape(host)
        paths = by_host[host]
        for path in sorted(paths, key=len, reverse=True):
            entries.append((start + re.escape(path), paths[path]))
        if "/" not in paths:
            entries.append((start + "/", f"{NO_ROUTE}|0|"))
    return entries


def _cli_word(text: str) -> str:
    """One word of a runtime command: the CLI splits on spaces and `;` and unescapes backslashes."""
    return re.sub(r"([\\ ;#])", r"\\\1", text)


def render_front_config(*, socket_path: Path, http_fd: int | None, https_fd: int | None, maxconn: int,
                        timeouts: Timeouts, clients: ClientPolicy, routes_map: Path, acme_map: Path,
                        crt_list: Path, backends: list[tuple[str, Path]], slots: int, maintenance_map: Path,
                        https_port: int | None = None, hold_map: Path | None = None) -> str:
    routes = check_map_path(routes_map)
    # As the contract says: the redirect names the HTTPS listener's port unless it is 443.
    port = f":{https_port}" if https_port not in (None, 443) else ""
    routing = [
        "    http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
        "    http-request set-var(txn.path) path",
        "    http-request set-var(txn.key) var(txn.host),concat(,txn.path,/)",
        f"    http-request set-var(txn.route) var(txn.key),map_reg({routes})",
        "    http-request set-var(txn.backend) var(txn.route),field(1,|)",
        "    http-request set-var(txn.redirect) var(txn.route),field(2,|)",
        "    http-request set-var(txn.hsts) var(txn.route),field(3,|)",
    ]
    dispatch = [
        f'    http-request return status 404 content-type text/plain string "{NOT_FOUND_404}" '
        "unless { var(txn.backend) -m beg b }",
        "    use_backend %[var(txn.backend)]",
    ]
    lines = [
        "# Written by ingot for the edge's shared listeners; never reloaded: routes, certificates and",
        "# servers change only through the runtime API on the stats socket below.",
        *global_and_defaults(socket_path, maxconn, timeouts, clients, hold_lua_path(hold_map)),
    ]
    if http_fd is not None:
        lines += [
            "frontend http",
            f"    bind fd@{http_fd}",
            *client_rules(clients, "http"),
            f"    http-request set-var(txn.acme) path,field(4,/),map({check_map_path(acme_map)}) "
            "if { path_beg /.well-known/acme-challenge/ }",
            '    http-request return status 200 content-type text/plain lf-string "%[var(txn.acme)]" '
            "if { var(txn.acme) -m found }",
            *routing,
            f'    http-request redirect code 308 location "https://%[var(txn.host)]{port}%[capture.req.uri]" '
            "if { var(txn.redirect) -m str 1 }",
            *dispatch,
            "",
        ]
    if https_fd is not None:
        lines += [
            "frontend https",
            f"    bind fd@{https_fd} ssl crt-list {check_map_path(crt_list)} strict-sni alpn h2,http/1.1",
            *client_rules(clients, "https"),
            *routing,
            '    http-response set-header Strict-Transport-Security "max-age=%[var(txn.hsts)]" '
            "if { var(txn.hsts) -m len gt 0 }",
            *dispatch,
            "",
        ]
    for backend, servers_map in backends:
        lines += backend_lines(backend, servers_map, slots, clients, maintenance_map, hold_map)
    return "\n".join(lines)


# ---- the haproxy process ------------------------------------------------------------------------------


class _FrontProcess(HAProxyRouter):
    """The front's haproxy: the dedicated router's process handling (spawn, wait, respawn, stop), with the
    front's configuration and two listeners, and no servers of its own."""

    def __init__(self, front: HAProxyFront) -> None:
        super().__init__(front.http or front.https or ("127.0.0.1", 0), name="edge front", workdir=front.workdir,
                         haproxy=front.haproxy, maxconn=front.maxconn, timeouts=front.timeouts,
                         clients=front.clients)
        self.front = front

    async def _adopt(self) -> bool:
        """Take over the haproxy an earlier front of this workdir left running (the edge restarted), as the
        dedicated router does: ours when `owner.json` names its pid and our listeners, its command line our
        config, and its admin socket is answered by its worker. Anything else there is stopped."""
        pid = running_master(self.workdir)
        if pid is None:
            return False
        front = self.front
        bound: dict[str, Address] = {}
        try:
            owner = json.loads(self.owner_path.read_text())
            bound = {k: (str(owner[k][0]), int(owner[k][1])) for k in ("http", "https") if owner.get(k)}
            mine = int(owner["pid"]) == pid and all(
                _fits(bound.get(kind), wanted) for kind, wanted in (("http", front.http), ("https", front.https)))
            if mine:
                info = await RuntimeAPI(self.api.path, timeout=ADOPT_TIMEOUT).run("show info")
                worker = next(int(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("Pid:"))
                mine = _parent_of(worker) == pid
        except (OSError, ValueError, KeyError, TypeError, IndexError, StopIteration, TimeoutError):
            mine = False
        if not mine:
            log.warning("%s: replacing haproxy pid %d: not this front's, or it does not answer", self._label(), pid)
            await asyncio.to_thread(_kill_group, pid, STOP_TIMEOUT)
            return False
        self._proc = _Adopted(pid)
        front.bound = bound
        front.load_state()
        front.adopted = front.ready = self._proc
        log.info("%s: adopted haproxy pid %d", self._label(), pid)
        return True

    async def _launch(self, binary: str, listen: Address) -> None:
        front = self.front
        await self._claim_socket_path()
        wanted = [front.bound.get("http") or front.http, front.bound.get("https") or front.https]
        sockets: list[socket.socket | None] = []
        try:
            for address in wanted:
                sockets.append(self._bind(address) if address is not None else None)
            http_sock, https_sock = sockets
            front.write_files(fresh=True)
            if self.holds:
                write_hold_files(self.hold_map)  # no backend held: each router sets its entry again
            self.config_path.write_text(render_front_config(
                socket_path=self.api.path, http_fd=http_sock.fileno() if http_sock else None,
                https_fd=https_sock.fileno() if https_sock else None, maxconn=self.maxconn,
                timeouts=self.timeouts, clients=self.clients, routes_map=front.routes_map,
                acme_map=front.acme_map, crt_list=front.crt_list,
                backends=[(b, front.servers_map_of(b)) for b in front.backend_names], slots=front.slots,
                maintenance_map=self.maintenance_map,
                https_port=https_sock.getsockname()[1] if https_sock else None,
                hold_map=self.hold_map if self.holds else None))
            await self._spawn(binary, *(s.fileno() for s in sockets if s is not None))
            for kind, sock in zip(("http", "https"), sockets, strict=True):
                if sock is not None:
                    front.bound[kind] = (str(sock.getsockname()[0]), int(sock.getsockname()[1]))
            assert self._proc is not None
            self.owner_path.write_text(json.dumps({"pid": self._proc.pid, **front.bound}))
        except BaseException:
            await self._terminate()
            raise
        finally:
            for sock in sockets:
                if sock is not None:
                    sock.close()  # haproxy holds its own copies
        await self._wait_ready()
        front.ready = self._proc

    async def _poll(self) -> None:
        return  # no servers of its own; each router polls its backend

    async def stop(self) -> None:
        await self._stop_poller()
        await self._terminate()


def _fits(got: Address | None, wanted: Address | None) -> bool:
    if wanted is None or got is None:
        return wanted is got
    return got == wanted or (wanted[1] == 0 and got[0] == wanted[0])


class _FrontRouter(HAProxyRouter):
    """A router of the front: the dedicated router's code on one of the front's backends. It starts no
    haproxy; after the front's haproxy was started again (a crash) it gives it its servers again."""

    def __init__(self, front: HAProxyFront, router_id: str, backend: str, name: str, clients: ClientPolicy) -> None:
        super().__init__(front.http or front.https or ("127.0.0.1", 0), name=name, workdir=front.workdir,
                         haproxy=front.haproxy, timeouts=front.timeouts, clients=clients, slots=front.slots)
        self.front = front
        self.router_id = router_id
        self.backend = backend
        self._servers_map = front.servers_map_of(backend)

    @property
    def listen_address(self) -> Address:
        """The front's HTTPS listener (else its HTTP one): where its clients connect; as configured until started."""
        front = self.front
        address = front.https_address or front.http_address or front.https or front.http
        assert address is not None  # a front has at least one listener
        return address

    async def start(self) -> None:
        if self._poller is not None:
            raise RuntimeError(f"router {self.name!r} is already started")
        self.front.claim_backend(self)  # again, after a stop
        await self._attach()
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _attach(self) -> None:
        proc = self.front.ready
        if proc is None or proc.returncode is not None:
            raise OperationFailed(f"{self._label()}: the edge's HAProxy front is not running")
        async with self._lock:
            self._proc = proc
            rows = parse_stat(await self.api.run(f"show stat {self.backend} 4 -1"))
            if proc is self.front.adopted:
                # The edge restarted: the servers this backend has are read back and reconciled, as on a
                # dedicated router's adoption.
                found = parse_servers_state(await self.api.run(f"show servers state {self.backend}"))
                owners = parse_map(await self.api.run(f"show map {self.servers_map}"))
                await self._reconcile(found, owners, rows)
                return
            # The backend may have served an earlier router: its slots' counters are where this one starts.
            self._free, self._raw_rows = slot_names(self.slots), {}
            self._slot_base = {name: counters_of(row) for name, row in rows.items()}
            await self._restore_servers()

    async def _respawn(self) -> bool:
        """The front starts haproxy again; this router only gives the new one its servers."""
        proc = self.front.ready
        if proc is None or proc.returncode is not None or proc is self._proc:
            await asyncio.sleep(0.1)
            return True  # no backoff: the front does the restarting
        async with self._lock:
            self._forget_haproxy_servers()
        try:
            await self._attach()
        except (OperationFailed, OSError, TimeoutError) as exc:
            log.warning("%s: giving the new haproxy its servers failed (again at the next poll): %s",
                        self._label(), exc)
            self._proc = None
        return True  # no backoff: the next poll tries again

    async def stop(self) -> None:
        await self._stop_poller()
        async with self._lock:
            proc = self._proc
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(OperationFailed, OSError, TimeoutError):
                    self._rows = await self._read_rows()
                    placed = [s for r in self._releases.values() for s in r.pool if s.name] + self._retiring
                    for server in placed:  # out, and their connections closed, as a dedicated router's stop does
                        await self._set(server, weight=0, state="maint")
                        await self.api.run(f"shutdown sessions server {self.backend}/{server.name}")
                        await self.api.run(f"del map {self.servers_map} {server.name}")
                        if not is_slot(server.name):
                            await self.api.run(f"del server {self.backend}/{server.name}")
                    await self.api.run(f"del map {self.maintenance_map} {self.backend}")  # the backend's next router
                    await self.api.run(f"del map {self.hold_map} {self.backend}")
                    self.hold_until = None
            self._retiring.clear()
            self._forget_haproxy_servers()
            self._proc = None
        self.front.release_router(self)


# ---- the front ---------------------------------------------------------------------------------------


class _Challenges(MutableMapping[str, str]):
    """token → key authorisation, mirrored into haproxy's `acme.map` at once (a blocking local call of a
    millisecond, so that a challenge is answerable the moment it is set, before the CA is told to look)."""

    def __init__(self, front: HAProxyFront) -> None:
        self.front = front
        self.data: dict[str, str] = {}

    def __getitem__(self, token: str) -> str:
        return self.data[token]

    def __setitem__(self, token: str, value: str) -> None:
        if not _ACME_TOKEN.fullmatch(token) or not _ACME_TOKEN.fullmatch(value):
            raise ValueError(f"an ACME token and key authorisation are base64url words, got {token!r}")
        self.data[token] = value
        self.front.write_files()
        self.front.run_now(f"del map {self.front.acme_map} {token}")
        self.front.run_now(f"add map {self.front.acme_map} {token} {value}")

    def __delitem__(self, token: str) -> None:
        del self.data[token]
        self.front.write_files()
        self.front.run_now(f"del map {self.front.acme_map} {token}")

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class HAProxyFront:
    """The `Front` on haproxy; see the module's docstring. Settings are plain arguments (the edge reads them)."""

    def __init__(self, workdir: Path, *, http: Address | None, https: Address | None, haproxy: str = "haproxy",
                 backends: int = BACKENDS, slots: int = SLOTS, maxconn: int = 4096,
                 timeouts: Timeouts | None = None, clients: ClientPolicy | None = None) -> None:
        if http is None and https is None:
            raise ValueError("an HAProxy front needs an HTTP or an HTTPS listener")
        self.workdir = Path(workdir)
        self.http, self.https = http, https
        self.haproxy = haproxy
        self.slots = slots
        self.maxconn = maxconn
        self.timeouts = timeouts or Timeouts()
        self.clients = clients or ClientPolicy()
        self.backend_names = [f"b{n}" for n in range(1, backends + 1)]
        self._free_backends = list(self.backend_names)
        self._assigned: dict[str, str] = {}  # router id → backend, kept across an edge restart (adoption)
        self.adopted: object | None = None  # the haproxy master taken over at start, if it was
        self.ready: Any = None  # the haproxy master whose admin socket answered: routers attach to it
        self.routers: dict[str, _FrontRouter] = {}
        self.bound: dict[str, Address] = {}
        self.table: list[tuple[str, str]] = []
        self.bindings: list[Binding] = []
        self.certificates: dict[str, Path] = {}  # host → its PEM file (certificate and key)
        # haproxy holds one certificate transaction at a time ("Operations on certificates are currently
        # locked!" for a second `set ssl cert` before the first commits): two hosts renewed at once queue here.
        self._certificate_lock = asyncio.Lock()
        self._challenges = _Challenges(self)
        self.challenges: MutableMapping[str, str] = self._challenges
        self.stopping: bool | None = None
        self.process = _FrontProcess(self)

    # ---- files ---------------------------------------------------------------------------------------

    @property
    def routes_map(self) -> Path:
        return self.workdir / "routes.map"

    @property
    def acme_map(self) -> Path:
        return self.workdir / "acme.map"

    @property
    def crt_list(self) -> Path:
        return self.workdir / "certs.crtlist"

    @property
    def backends_path(self) -> Path:
        return self.workdir / "backends.json"

    def load_state(self) -> None:
        """After adopting a running haproxy: what it holds, from the files kept in step with it."""
        with contextlib.suppress(OSError, ValueError):
            self._assigned = {str(k): str(v) for k, v in json.loads(self.backends_path.read_text()).items()}
        with contextlib.suppress(OSError):
            lines = self.routes_map.read_text().splitlines()
            self.table = [(k, v) for k, _, v in (line.partition(" ") for line in lines)]
        with contextlib.suppress(OSError):
            self._challenges.data = dict(line.split(" ", 1) for line in self.acme_map.read_text().splitlines() if line)
        with contextlib.suppress(OSError):
            for line in self.crt_list.read_text().splitlines():
                path, _, host = line.partition(" ")
                if host:
                    self.certificates[host] = Path(path)

    def servers_map_of(self, backend: str) -> Path:
        return self.workdir / f"{backend}.map"

    def cert_path(self, host: str) -> Path:
        return self.workdir / "certs" / (host.replace("*", "_wildcard") + ".pem")

    def write_files(self, fresh: bool = False) -> None:
        """What a haproxy started now must load: the routes, challenges and certificates as they are
        (`fresh`: for a haproxy about to start, whose server slots are all free)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.routes_map.write_text("".join(f"{key} {value}\n" for key, value in self.table))
        self.acme_map.write_text("".join(f"{t} {v}\n" for t, v in self.challenges.items()))
        self.crt_list.write_text("".join(f"{path} {host}\n" for host, path in self.certificates.items()))
        for backend in self.backend_names:
            if fresh or not self.servers_map_of(backend).exists():
                self.servers_map_of(backend).write_text("")
        maintenance = self.workdir / "maint.map"  # `HAProxyRouter.maintenance_map`: each router sets its entry again
        if fresh or not maintenance.exists():
            maintenance.write_text("")

    # ---- Front protocol ---------------------------------------------------------------------------------

    @property
    def http_address(self) -> Address | None:
        return self.bound.get("http") if self.http is not None else None

    @property
    def https_address(self) -> Address | None:
        return self.bound.get("https") if self.https is not None else None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        await self.process.start()

    async def stop(self) -> None:
        self.stopping = True
        try:
            for router in list(self.routers.values()):
                await router.stop()
            await self.process.stop()
        finally:
            self.stopping = None
        self.bound.clear()

    def router(self, router_id: str, name: str, clients: ClientPolicy, listen: Address | None = None) -> Router:
        if listen is not None:
            raise OperationFailed(
                f"router {name!r}: the HAProxy edge cannot give a router a listener of its own "
                f"({listen[0]}:{listen[1]}) without a reload",
                details=["use the shared listeners through `routes`, or the built-in edge"],
            )
        if router_id in self.routers:
            raise ValueError(f"the front already has a router {router_id!r}")
        if not self._free_backends:
            raise OperationFailed(f"router {name!r}: all {len(self.backend_names)} backends of the HAProxy "
                                  "edge are taken", details=["give the front more backends"])
        backend = self._assigned.get(router_id)
        backend = backend if backend in self._free_backends else self._free_backends[0]
        self._free_backends.remove(backend)
        router = _FrontRouter(self, router_id, backend, name, clients)
        self.routers[router_id] = router
        self._remember(router_id, backend)
        return router

    def _remember(self, router_id: str, backend: str | None) -> None:
        if backend is None:
            self._assigned.pop(router_id, None)
        else:
            self._assigned[router_id] = backend
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backends_path.write_text(json.dumps(self._assigned))

    def claim_backend(self, router: _FrontRouter) -> None:
        """A stopped router started again takes a backend again (its own if still free)."""
        if self.routers.get(router.router_id) is router:
            return
        if router.router_id in self.routers:
            raise ValueError(f"the front already has another router {router.router_id!r}")
        if router.backend in self._free_backends:
            self._free_backends.remove(router.backend)
        elif self._free_backends:
            router.backend = self._free_backends.pop(0)
            router._servers_map = self.servers_map_of(router.backend)
        else:
            raise OperationFailed(f"router {router.name!r}: all {len(self.backend_names)} backends are taken")
        self.routers[router.router_id] = router
        self._remember(router.router_id, router.backend)

    def release_router(self, router: _FrontRouter) -> None:
        for router_id, known in list(self.routers.items()):
            if known is router:
                del self.routers[router_id]
                self._free_backends.append(router.backend)
                if self.stopping is None:  # a router leaving, not the edge stopping: forget its backend
                    self._remember(router_id, None)

    async def set_table(self, bindings: list[Binding]) -> None:
        table = route_entries(bindings, {rid: r.backend for rid, r in self.routers.items()})
        self.bindings, self.table = list(bindings), table
        self.write_files()
        if not self._running():
            return
        api = self.process.api
        answer = await api.expect_in(f"prepare map {self.routes_map}", "New version created:")
        version = answer.rsplit(":", 1)[1].strip()
        for key, value in table:
            await api.expect(f"add map @{version} {self.routes_map} {_cli_word(key)} {_cli_word(value)}")
        await api.expect(f"commit map @{version} {self.routes_map}")

    async def set_certificate(self, host: str, cert_pem: bytes, key_pem: bytes) -> None:
        host = host.lower()
        if not _HOST.fullmatch(host):
            raise ValueError(f"certificate host {host!r} is not a host name or *.domain")
        path = self.cert_path(host)
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = cert_pem.decode("ascii").strip() + "\n" + key_pem.decode("ascii").strip() + "\n"
        async with self._certificate_lock:
            new = host not in self.certificates
            if self._running():
                api = self.process.api
                if new:
                    await api.expect_in(f"new ssl cert {path}", "New empty certificate store")
                try:
                    await api.expect_in(f"set ssl cert {path}", "Transaction", payload=pem)
                    await api.expect_in(f"commit ssl cert {path}", "Success!")
                except BaseException:
                    # A transaction left open would refuse every later certificate change until haproxy restarts.
                    with contextlib.suppress(Exception):
                        await api.run(f"abort ssl cert {path}")
                    raise
                if new:
                    await api.expect_in(f"add ssl crt-list {self.crt_list}", "Success!", payload=f"{path} {host}")
            path.write_text(pem)
            path.chmod(0o600)
            self.certificates[host] = path
            self.write_files()

    async def remove_certificate(self, host: str) -> None:
        host = host.lower()
        async with self._certificate_lock:
            path = self.certificates.pop(host, None)
            if path is None:
                return
            self.write_files()
            if self._running():
                api = self.process.api
                await api.expect_in(f"del ssl crt-list {self.crt_list} {path}", "deleted")
                await api.expect_in(f"del ssl cert {path}", "deleted")
            path.unlink(missing_ok=True)

    # ---- helpers -------------------------------------------------------------------------------------

    def _running(self) -> bool:
        proc = self.process._proc
        return proc is not None and proc.returncode is None

    def run_now(self, command: str) -> str:
        """A runtime command from synchronous code (the challenges mapping): a local socket, answered at once."""
        if not self._running():
            return ""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(self.process.api.path))
            sock.sendall(command.encode("ascii") + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
