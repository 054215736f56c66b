"""The edge: the machine's data plane, one long-lived process serving every project's routers.

Agents (the control plane, one per project) drive it over a local control socket (`control.sock`,
0600 in a 0700 home: only its owner, root in production, may connect). What they send is
declarative state per router: its listen address and kind, the pool of upstream addresses of each
release, the weights, the releases being drained. The edge writes that state to `state.json`
(atomically) after every change, before it answers, so an edge that restarts serves the same
routers again without asking anyone. It never needs an agent to keep serving: an agent that is
killed, restarted, stopped or overloaded changes nothing here.

Router ids are chosen by the agents (`<state dir>#<environment>/<service>@<host>:<port>`, or
`...@routes` for a service served by the shared listeners only): the owner part keeps projects apart,
and one address is served by one router only; a second claim on it is refused naming the holder.

Shared listeners (the front, edge/front.py): made from the machine's settings (edge/settings.py) when
the first router with routes arrives, so an edge without routes never binds :80/:443. Every router's
routes make the front's table, given whole after each change; a host+path claimed by another service
(of any project) is refused naming its holder. Certificates from files (`tls: {cert, key}`) come from
the agents as PEM and are kept in `certs/` (0600) so a restarted edge serves them again; `tls: auto`
hosts are `auto_hosts`, for the certificate manager (`certificates`, ACME, edge/tls/manager.py) to provide:
made with the first such host, its store (`acme/certs/`) the one copy of what it issued, installed again
when a restarted edge's front starts. Its state per host is in `stats` and `list`; its events (issued,
failed...) are kept for the agents, which record those of their own hosts in their project's ledger.

Started on demand (by the first agent that needs it, under ingot's supervisor), the edge ends when
its last router is released (`ingot down` everywhere): nothing is left running. `ingot edge serve
--persistent` (what the systemd unit of `ingot install` runs) keeps it up while empty.

An edge that restarts (kill -9, a crash) costs no request that was not already in flight:

- HAProxy routers: haproxy runs in a session of its own and outlives the edge; the next edge adopts
  it (`HAProxyRouter.start`: verified ours, servers read back, reconciled by runtime commands only).
  An edge that stops on purpose (SIGTERM, its last router released) stops its haproxies.
- Built-in routers: the listening sockets are held by the edge's supervisor (`ingot.fdstore`, which
  says why that and not SO_REUSEPORT) and handed to the next edge, so connections wait in the
  listen queue for the ~0.1-0.5 s of the restart instead of being refused. Requests the killed edge
  had in flight on its own connections are lost: a kill -9 mid-request cannot hand those over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ingot import __version__, pidfile
from ingot.agent.protocol import decode, encode
from ingot.atomic import write_atomically
from ingot.edge.builtin_front import BuiltinFront, check_certificate
from ingot.edge.front import Binding, Front, Route
from ingot.edge.fronts import make_front
from ingot.edge.home import EdgeHome
from ingot.edge.routing import host_candidates
from ingot.edge.settings import EdgeSettings, address_text
from ingot.errors import IngotError, OperationFailed, UserInputError
from ingot.fdstore import Store
from ingot.routers.base import (
    Address,
    ClientPolicy,
    HealthCheck,
    Router,
    can_hold,
    drain_cut,
    raise_open_files_limit,
    set_maintenance,
)
from ingot.routers.builtin import BuiltinRouter, install_fast_loop
from ingot.routers.haproxy import HAProxyRouter, stop_leftover_haproxy

log = logging.getLogger("ingot.edge")
KINDS = ("builtin", "haproxy")
NO_LISTENER: Address = ("", 0)  # a router with routes only: no listener of its own
FRONT_FDS = {"http": "front:http", "https": "front:https"}  # names of the front's sockets in the fd store
# For tests only: a file holding a number of seconds the certificate manager's clock runs ahead (read at each
# look at the clock), to make certificates due for renewal in a running edge. Never set in production.
TEST_CLOCK_FILE = "INGOT_TEST_ACME_CLOCK_FILE"
CERTIFICATE_EVENTS = 500  # kept in memory for the agents to record (each polls every 0.25 s)


class CertificateManager(Protocol):
    """What provides the certificates of `tls: auto` hosts (ACME, edge/tls/manager.py): told the whole set
    after each change, asked their state (per host: state, not_after, last_error, next_attempt)."""

    async def start(self, hosts: Iterable[str] | None = None) -> None: ...

    async def hosts_changed(self, edge: Edge, auto_hosts: set[str]) -> None: ...

    def status(self) -> dict[str, dict[str, Any]]: ...

    async def stop(self) -> None: ...


@dataclass
class RouteState:
    """What the agent asked of one router: persisted, and enough to build the router again."""

    id: str
    owner: str
    name: str
    kind: str
    listen: Address
    pools: dict[str, list[Address]] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    draining: list[str] = field(default_factory=list)
    health: dict[str, Any] | None = None  # a `HealthCheck` as a dict
    clients: dict[str, Any] | None = None  # a `ClientPolicy` as a dict
    routes: list[dict[str, Any]] = field(default_factory=list)  # `Route`s as dicts, on the shared listeners
    maintenance: dict[str, Any] | None = None  # {"retry_after": seconds, "page": HTML or None, "since": time}
    # strategy.hold: its deadline (seconds since the epoch) while the router holds new requests. An edge
    # restarted before it resumes the hold until then; the agent's `release_hold` (or the deadline) ends it.
    hold_until: float | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RouteState:
        return cls(
            id=str(raw["id"]), owner=str(raw["owner"]), name=str(raw["name"]), kind=str(raw["kind"]),
            listen=_address(raw["listen"]),
            pools={str(r): [_address(a) for a in addrs] for r, addrs in raw.get("pools", {}).items()},
            weights={str(r): int(w) for r, w in raw.get("weights", {}).items()},
            draining=[str(r) for r in raw.get("draining", [])],
            health=dict(raw["health"]) if raw.get("health") else None,
            clients=dict(raw["clients"]) if raw.get("clients") else None,
            routes=[Route.from_dict(r).as_dict() for r in raw.get("routes", [])],
            maintenance=dict(raw["maintenance"]) if raw.get("maintenance") else None,
            hold_until=float(raw["hold_until"]) if raw.get("hold_until") is not None else None,
        )

    @property
    def service(self) -> str:
        """The owner, environment and service of the router (its id without the address): two routers of one
        service (an address being changed) may hold the same route; routers of two services may not."""
        return self.id.rpartition("@")[0] or self.id


def _address(raw: Any) -> Address:
    host, port = raw
    return str(host), int(port)


class Edge:
    def __init__(self, home: EdgeHome, *, persistent: bool = False) -> None:
        self.home = home
        self.persistent = persistent
        self.states: dict[str, RouteState] = {}
        self.routers: dict[str, Router] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self._stopping = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self.fds = Store()  # listening sockets held by the supervisor across restarts
        self._held: set[str] = set()  # routers being built on a socket the supervisor holds already
        self.settings = EdgeSettings.load(home.root)
        self.front: Front | None = None  # the shared listeners, made with the first route
        self._routes_lock = asyncio.Lock()  # route claims are checked and applied one at a time
        self.auto_hosts: set[str] = set()  # `tls: auto` hosts, for `certificates`
        self.certificates: CertificateManager | None = None  # the ACME side plugs in here
        self._installed: set[str] = set()  # hosts whose certificate the front has
        # What the certificate manager did (issued, renewed, failed...), for the agents to put in their ledgers.
        self.certificate_events: deque[dict[str, Any]] = deque(self._saved_events(), maxlen=CERTIFICATE_EVENTS)

    # ---- lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        await self._restore()
        sock = self.home.control_socket
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        old_umask = os.umask(0o177)  # the socket is 0600 from the start, not after a chmod
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(sock), limit=2**22)
        finally:
            os.umask(old_umask)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        log.info("edge %s ready on %s (pid %d, %d routers)", __version__, sock, os.getpid(), len(self.routers))
        await self._stopping.wait()
        self._server.close()
        # Gone from the path at once: a client starting the next edge must not find this one's socket, and
        # this edge's last act must not unlink the next one's.
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        for router_id in self.routers:
            self.fds.drop(router_id)
        # All at once: each HAProxy router waits for its haproxy to end, and one after another those waits add up.
        await asyncio.gather(*(router.stop() for router in self.routers.values()), return_exceptions=True)
        if self.front is not None:
            for name in FRONT_FDS.values():
                self.fds.drop(name)
            with contextlib.suppress(Exception):
                await self.front.stop()
        if self.certificates is not None:
            await self.certificates.stop()
        log.info("edge stopped (pid %d)", os.getpid())

    async def _restore(self) -> None:
        try:
            raw = json.loads(self.home.state_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("the edge's state %s is unreadable (%s); starting empty", self.home.state_file, exc)
            return
        for item in raw.get("routes", []):
            try:
                state = RouteState.from_dict(item)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("skipping a malformed route in %s: %s", self.home.state_file, exc)
                continue
            self.states[state.id] = state
        if any(s.routes for s in self.states.values()):
            try:
                await self.start_front()
            except IngotError as exc:
                log.error("the shared listeners cannot start: %s", exc.message)
        auto = {str(r["host"]) for s in self.states.values() for r in s.routes if r.get("tls") == "auto"}
        if self.front is not None and auto:
            # The stored ACME certificates go in first, so a restarted edge handshakes as before; no new order.
            await self._acme().start(auto)
        for state in self.states.values():
            try:
                await self._build(state)
            except IngotError as exc:
                # Kept: the agent's next ensure tries again, and says why it fails.
                log.error("could not restore router %s on %s:%s: %s", state.name, *state.listen, exc.message)
        if self.front is not None:
            for host in self._file_hosts():
                try:
                    await self._load_certificate(host)
                except IngotError as exc:
                    log.error("the stored certificate of %s cannot be used: %s", host, exc.message)
            await self._apply_table()
        for name in self.fds.drop_unclaimed():
            log.info("closed a held listener of a router that is gone (%s)", name)
        self._stop_stray_haproxy()

    def _stop_stray_haproxy(self) -> None:
        """A haproxy in a workdir no route names (an edge that died while releasing it) is stopped."""
        wanted = {self.home.router_dir(s.id) for s in self.states.values() if s.kind == "haproxy"}
        with contextlib.suppress(OSError):
            for workdir in (self.home.root / "haproxy").iterdir():
                if workdir not in wanted:
                    stop_leftover_haproxy(workdir)

    async def _build(self, state: RouteState) -> Router:
        """The router of `state`, started with its whole state given first: an adopted haproxy is then
        reconciled once against the final pools and weights (never through a half-restored state)."""
        router = self._new_router(state)
        if state.health is not None:
            await router.set_health(HealthCheck(**state.health))
        for release, pool in state.pools.items():
            await router.set_backends(release, pool)
        await router.set_weights(state.weights)
        for release in state.draining:
            await router.drain(release, 0.0)
        if state.maintenance is not None:
            await set_maintenance(router, int(state.maintenance["retry_after"]), state.maintenance.get("page"))
        holding = state.hold_until is not None and state.hold_until > time.time() and can_hold(router)
        if holding:
            log.info("router %s: holding new requests again for up to %.2f s (a hold the edge's restart "
                     "interrupted; its agent's release_hold or the deadline ends it)", state.name,
                     (state.hold_until or 0.0) - time.time())
        if holding and hasattr(router, "hold_until"):
            setattr(router, "hold_until", state.hold_until)  # noqa: B010  HAProxy: given to the haproxy it adopts or starts
        try:
            await router.start()
            if holding and not hasattr(router, "hold_until"):
                # The built-in router: held from its first request (no await in between lets one through).
                await router.hold(max(0.001, (state.hold_until or 0.0) - time.time()))  # type: ignore[attr-defined]
        except BaseException:
            if state.id in self._held:  # let the supervisor close it: the next try binds afresh
                self.fds.drop(state.id)
                self._held.discard(state.id)
            raise
        if isinstance(router, BuiltinRouter) and router.listening_fd is not None and state.id not in self._held:
            self.fds.keep(state.id, router.listening_fd)
        self._held.discard(state.id)
        self.routers[state.id] = router
        return router

    def _new_router(self, state: RouteState) -> Router:
        if state.routes:
            if self.front is None:
                raise OperationFailed(f"router {state.name} has routes but the shared listeners are not running")
            listen = None if state.listen == NO_LISTENER else state.listen
            if listen is not None and isinstance(self.front, BuiltinFront):
                # Its own listener as well: on the socket the supervisor held, as a dedicated router's.
                router = self._builtin(state)
                self.front.adopt(state.id, router)
                return router
            return self.front.router(state.id, state.name, ClientPolicy.from_dict(state.clients), listen=listen)
        if state.kind == "haproxy":
            # Adopts the haproxy an earlier edge left serving, if there is one that answers.
            return HAProxyRouter(state.listen, name=state.name, workdir=self.home.router_dir(state.id),
                                 clients=ClientPolicy.from_dict(state.clients))
        return self._builtin(state)

    def _builtin(self, state: RouteState) -> BuiltinRouter:
        sock = self.fds.take(state.id)
        if sock is not None and state.listen[1] not in (0, sock.getsockname()[1]):
            sock.close()  # held for another port: this router listens anew
            self.fds.drop(state.id)
            sock = None
        if sock is not None:
            self._held.add(state.id)  # the supervisor holds it already
        return BuiltinRouter(state.listen, name=state.name, sock=sock,
                             clients=ClientPolicy.from_dict(state.clients))

    def _persist(self) -> None:
        path = self.home.state_file
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps({"version": 1, "routes": [asdict(s) for s in self.states.values()]}, indent=1)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    # ---- operations ----------------------------------------------------------------------------
    def _lock(self, router_id: str) -> asyncio.Lock:
        return self.locks.setdefault(router_id, asyncio.Lock())

    def _router(self, router_id: str) -> tuple[RouteState, Router]:
        state = self.states.get(router_id)
        router = self.routers.get(router_id)
        if state is None or router is None:
            raise OperationFailed(f"the edge has no router {router_id!r} (ensure it first)")
        return state, router

    async def ensure(self, router_id: str, owner: str, name: str, kind: str, listen: Address,
                     clients: dict[str, Any] | None = None, routes: list[dict[str, Any]] | None = None,
                     certificates: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
        if kind not in KINDS:
            raise UserInputError(f"unknown router kind {kind!r}; expected one of {', '.join(KINDS)}")
        wanted = [Route.from_dict(r) for r in routes or []]
        if wanted or (routes is not None and router_id in self.states and self.states[router_id].routes):
            async with self._routes_lock:
                return await self._ensure_routed(router_id, owner, name, kind, listen, clients, wanted,
                                                 certificates or {})
        return await self._ensure(router_id, owner, name, kind, listen, clients)

    async def _ensure_routed(self, router_id: str, owner: str, name: str, kind: str, listen: Address,
                             clients: dict[str, Any] | None, routes: list[Route],
                             certificates: dict[str, dict[str, str]]) -> dict[str, Any]:
        """`ensure` of a router with routes (or losing its last ones): claims checked against every other
        service's, certificates stored, the front's table replaced once the router serves."""
        mine = self.states.get(router_id)
        for route in routes:
            holder = self._holder(route, mine.service if mine else router_id.rpartition("@")[0] or router_id)
            if holder is not None:
                raise OperationFailed(
                    f"{route.host}{route.path} is already routed by this machine's edge to {holder.name}",
                    details=[f"its state directory: {holder.owner}",
                             "choose another host or path, or take the route out of the other spec first"])
        if routes and listen != NO_LISTENER and self.settings.kind == "haproxy":
            # Refused before anything changes: the router serving on `listen` today goes on serving there.
            raise UserInputError(
                f"router {name}: the HAProxy edge cannot give a service with routes a listener of its own "
                f"({listen[0]}:{listen[1]}) without a reload",
                details=["drop its `router.listen` (the shared listeners serve it), or use the built-in edge "
                         "(INGOT_EDGE_KIND=builtin)"])
        mine_hosts = {r.host for r in routes if r.tls == "files"}
        certificates = {h: pem for h, pem in certificates.items() if h in mine_hosts}  # its own hosts only
        for host, pem in certificates.items():
            check_certificate(host, pem["cert"].encode(), pem["key"].encode())  # before anything changes
        for host, pem in certificates.items():
            self._store_certificate(host, pem["cert"].encode(), pem["key"].encode())
        if routes:
            await self.start_front()
        was = mine.routes if mine is not None else []
        if mine is not None:
            mine.routes = [r.as_dict() for r in routes]
            built = self.routers.get(router_id)
            if built is not None and routes and not was and self.front is not None:
                await self._move_to_front(mine, built)
            answer = await self._ensure(router_id, owner, name, kind, listen, clients)
        else:
            pending = RouteState(id=router_id, owner=owner, name=name, kind=kind, listen=listen,
                                 routes=[r.as_dict() for r in routes])
            answer = await self._ensure(router_id, owner, name, kind, listen, clients, pending=pending)
        for host in certificates:
            await self._load_certificate(host)
        if was != self.states[router_id].routes or certificates:
            self._persist()
        await self._apply_table()
        return answer

    async def _move_to_front(self, state: RouteState, router: Router) -> None:
        """A router that gains its first routes: the front serves it as it is if it can (the built-in one
        can, any built-in router), else it is built again by the front (its listener reopens)."""
        assert self.front is not None
        adopt = getattr(self.front, "adopt", None)
        if adopt is not None and adopt(state.id, router):
            return
        self.routers.pop(state.id, None)
        self.fds.drop(state.id)
        await router.stop()
        await self._build(state)

    def _holder(self, route: Route, service: str) -> RouteState | None:
        key = (route.host, route.path.rstrip("/") or "/")
        for other in self.states.values():
            if other.service == service:
                continue
            for raw in other.routes:
                if (raw["host"], str(raw["path"]).rstrip("/") or "/") == key:
                    return other
        return None

    async def _ensure(self, router_id: str, owner: str, name: str, kind: str, listen: Address,
                      clients: dict[str, Any] | None = None, pending: RouteState | None = None) -> dict[str, Any]:
        state = self.states.get(router_id)
        if state is not None and router_id in self.routers:
            if state.kind != kind:
                raise UserInputError(f"router {state.name} on {state.listen[0]}:{state.listen[1]} is {state.kind}, "
                                     f"not {kind}")
            if clients is not None and ClientPolicy.from_dict(clients).as_dict() != state.clients:
                await self.set_clients(router_id, clients)  # the spec changed while its agent was away
            return {"listen": list(self._listen_of(state)), "created": False,
                    "holds": can_hold(self.routers[router_id])}
        for other in self.states.values():
            if other.id != router_id and other.listen == listen and listen[1] != 0 and listen != NO_LISTENER:
                raise OperationFailed(
                    f"{listen[0]}:{listen[1]} is already served by this machine's edge for {other.name}",
                    details=[f"its state directory: {other.owner}", "choose another `router.listen` address"])
        if state is None:
            state = pending or RouteState(id=router_id, owner=owner, name=name, kind=kind, listen=listen)
        state.clients = ClientPolicy.from_dict(clients).as_dict()  # checked here: a bad one is refused
        router = await self._build(state)
        if state.listen != NO_LISTENER:
            state.listen = router.listen_address  # the bound port, so that a restart binds the same one
        self.states[router_id] = state
        self._persist()
        return {"listen": list(self._listen_of(state)), "created": True, "holds": can_hold(router)}

    def _listen_of(self, state: RouteState) -> Address:
        """Where the router listens: NO_LISTENER for one on the shared listeners only, whatever its front says."""
        return NO_LISTENER if state.listen == NO_LISTENER else self.routers[state.id].listen_address

    async def set_backends(self, router_id: str, release: str, addrs: list[Address]) -> dict[str, Any]:
        state, router = self._router(router_id)
        await router.set_backends(release, addrs)
        state.pools[release] = list(dict.fromkeys(addrs))
        self._persist()
        return {}

    async def set_weights(self, router_id: str, weights: dict[str, int]) -> dict[str, Any]:
        state, router = self._router(router_id)
        await router.set_weights(weights)
        state.weights = dict(weights)
        state.draining = [r for r in state.draining if weights.get(r, 0) == 0]
        self._persist()
        return {}

    async def set_health(self, router_id: str, check: dict[str, Any]) -> dict[str, Any]:
        state, router = self._router(router_id)
        await router.set_health(HealthCheck(**check))
        state.health = asdict(HealthCheck(**check))
        self._persist()
        return {}

    async def set_clients(self, router_id: str, clients: dict[str, Any]) -> dict[str, Any]:
        """New limits on a router's clients. The built-in router applies them at once; HAProxy's are in its
        configuration, which is never reloaded: they apply when its haproxy starts again."""
        state, router = self._router(router_id)
        policy = ClientPolicy.from_dict(clients)
        state.clients = policy.as_dict()
        self._persist()
        configure = getattr(router, "set_clients", None)
        if configure is not None:
            configure(policy)
        return {}

    async def drain(self, router_id: str, release: str, timeout: float) -> dict[str, Any]:
        state, router = self._router(router_id)
        if release in state.pools and release not in state.draining:
            state.draining.append(release)
            self._persist()
        drained = await router.drain(release, timeout)
        return {"drained": drained, "in_flight": self._in_flight(router, release),
                "cut": drain_cut(router, release)}

    async def hold(self, router_id: str, seconds: float) -> dict[str, Any]:
        """New requests wait in the router (strategy.hold). Persisted with its deadline: an edge restarted
        (even killed) mid-hold holds again until that deadline, or until the agent's `release_hold`."""
        state, router = self._router(router_id)
        if not can_hold(router):
            raise UserInputError(f"router {state.name} is {state.kind}: it cannot hold requests (strategy.hold)",
                                 details=["HAProxy holds them with Lua: its haproxy was built without it"])
        state.hold_until = time.time() + seconds
        self._persist()  # first: a kill between the two leaves a hold the restart resumes, not one it forgets
        await router.hold(seconds)  # type: ignore[attr-defined]
        return {}

    async def maintenance(self, router_id: str, on: bool, retry_after: int, page: str | None,
                          since: str | None) -> dict[str, Any]:
        """Answer every request 503 + Retry-After (or serve again); persisted, so a restart keeps it."""
        state, router = self._router(router_id)
        await set_maintenance(router, retry_after if on else None, page)  # first: a page refused changes nothing
        was = state.maintenance
        state.maintenance = {"retry_after": retry_after, "page": page, "since": since} if on else None
        self._persist()
        return {"maintenance": state.maintenance, "was": bool(was)}

    async def release_hold(self, router_id: str) -> dict[str, Any]:
        state, router = self._router(router_id)
        held = await router.release_hold() if can_hold(router) else 0  # type: ignore[attr-defined]
        if state.hold_until is not None:
            state.hold_until = None
            self._persist()
        return {"held": held}

    async def drain_backends(self, router_id: str, release: str, addrs: list[Address],
                             timeout: float) -> dict[str, Any]:
        state, router = self._router(router_id)
        gone = set(addrs)
        state.pools[release] = [a for a in state.pools.get(release, []) if a not in gone]
        self._persist()
        drained = await router.drain_backends(release, addrs, timeout)
        return {"drained": drained, "cut": drain_cut(router, release)}

    async def remove_release(self, router_id: str, release: str) -> dict[str, Any]:
        state, router = self._router(router_id)
        await router.remove_release(release)
        state.pools.pop(release, None)
        state.weights.pop(release, None)
        state.draining = [r for r in state.draining if r != release]
        self._persist()
        return {}

    async def release(self, router_id: str) -> dict[str, Any]:
        """Stop serving a router and forget it; the last one released ends an on-demand edge."""
        router = self.routers.pop(router_id, None)
        state = self.states.pop(router_id, None)
        self._persist()
        self.fds.drop(router_id)  # its listen queue goes now, not when the supervisor ends
        if state is not None and state.routes:
            async with self._routes_lock:
                await self._apply_table()
        if router is not None:
            await router.stop()
        if not self.states and not self.persistent:
            log.info("no router left: the edge stops")
            self._stopping.set()
        return {"released": router is not None}

    def stats(self, router_id: str) -> dict[str, Any]:
        state, router = self._router(router_id)
        return {"listen": list(router.listen_address), "kind": state.kind,
                "weights": router.weights(), "stats": {r: s.as_dict() for r, s in router.stats().items()},
                "backends": router.backend_health(), **self._router_certificates(state)}

    def listing(self) -> dict[str, Any]:
        routes = []
        for state in self.states.values():
            router = self.routers.get(state.id)
            routes.append({
                "id": state.id, "name": state.name, "owner": state.owner, "kind": state.kind,
                "listen": f"{state.listen[0]}:{state.listen[1]}", "serving": router is not None,
                "weights": router.weights() if router else state.weights,
                "pools": {r: [f"{h}:{p}" for h, p in pool] for r, pool in state.pools.items()},
                "routes": [{**r, "certificate": self.certificate_state(r), "acme": self._acme_status(r)}
                           for r in state.routes],
                "maintenance": {k: v for k, v in state.maintenance.items() if k != "page"}
                if state.maintenance else None,
            })
        front = None
        if self.front is not None:
            front = {"kind": self.settings.kind, "http": address_text(self.front.http_address),
                     "https": address_text(self.front.https_address), "clients": self.settings.clients.as_dict()}
        return {"pid": os.getpid(), "version": __version__, "home": str(self.home.root), "routes": routes,
                "front": front}

    # ---- the shared listeners ------------------------------------------------------------------
    async def start_front(self) -> Front:
        """The front, made from the settings and started on first use (on the sockets the supervisor held)."""
        if self.front is not None:
            return self.front
        socks = {}
        for short, name in FRONT_FDS.items():
            sock = self.fds.take(name)
            wanted = getattr(self.settings, short)
            if sock is not None and (wanted is None or sock.getsockname()[1] != wanted[1]):
                sock.close()  # held for another address: the listener binds anew
                self.fds.drop(name)
                sock = None
            if sock is not None:
                socks[short] = sock
        front = make_front(self.settings, home=self.home.root, socks=socks)
        try:
            await front.start()
        except BaseException:
            for short in socks:
                self.fds.drop(FRONT_FDS[short])
            raise
        listening = getattr(front, "listening_fds", None)
        for short, fd in (listening() if listening is not None else {}).items():
            if short not in socks:
                self.fds.keep(FRONT_FDS[short], fd)
        clients = self.settings.clients
        log.info("shared listeners (%s): http %s, https %s; head timeout %gs, min body rate %d B/s, max connections "
                 "%d, trusted proxies %s", self.settings.kind, address_text(front.http_address),
                 address_text(front.https_address), clients.head_timeout, clients.min_body_rate,
                 clients.max_connections, ", ".join(clients.trusted_proxies) or "none")
        self.front = front
        return front

    async def _apply_table(self) -> None:
        """Give the front the whole table: every serving router's routes (a route two routers of one service
        hold, while its address changes, goes to the one that claimed it last)."""
        if self.front is None:
            return
        bindings: dict[tuple[str, str], Binding] = {}
        auto: set[str] = set()
        for state in self.states.values():
            if state.id not in self.routers:
                continue
            for raw in state.routes:
                route = Route.from_dict(raw)
                bindings[(route.host, route.path.rstrip("/") or "/")] = Binding(route, state.id, state.owner,
                                                                               state.name)
                if route.tls == "auto":
                    auto.add(route.host)
        await self.front.set_table(list(bindings.values()))
        # A certificate no route names any more leaves the front (its file stays, should the route come back).
        hosts = {b.route.host for b in bindings.values()}
        for host in sorted(self._installed - hosts):
            await self.front.remove_certificate(host)
            self._installed.discard(host)
        self.auto_hosts = auto
        if auto and self.certificates is None:
            self._acme()  # an edge without `tls: auto` hosts never contacts an ACME server
        if self.certificates is not None:
            await self.certificates.hosts_changed(self, set(auto))

    def _file_hosts(self) -> set[str]:
        return {str(r["host"]) for s in self.states.values() for r in s.routes if r.get("tls") == "files"}

    def _certificate_path(self, host: str) -> Path:
        return self.home.root / "certs" / (host.replace("*", "_") + ".pem")

    def _store_certificate(self, host: str, cert: bytes, key: bytes) -> None:
        path = self._certificate_path(host)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, cert.rstrip() + b"\n" + key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    async def _load_certificate(self, host: str) -> None:
        """Install the stored certificate of `host` on the front (a bad one is refused: UserInputError)."""
        if self.front is None:
            return
        try:
            pem = self._certificate_path(host).read_bytes()
        except FileNotFoundError:
            return
        marker = pem.find(b"-----BEGIN", pem.rfind(b"-----END CERTIFICATE-----"))
        await self.front.set_certificate(host, pem[:marker], pem[marker:])
        self._installed.add(host)

    async def set_certificate(self, host: str, cert_pem: bytes, key_pem: bytes) -> None:
        """Install (and keep, for restarts) the certificate of `host`."""
        self._store_certificate(host, cert_pem, key_pem)
        await self._load_certificate(host)

    def _acme(self) -> CertificateManager:
        """The certificate manager of `tls: auto` hosts, made on first use. Its store (<home>/acme/certs) is
        the one copy of what it issues: it installs on the front directly, never through certs/."""
        if self.certificates is None:
            from ingot.edge.tls.manager import CertificateManager as AcmeManager

            assert self.front is not None
            self.certificates = AcmeManager(
                self.home.root, challenges=self.front.challenges, install=self._install_issued,
                directory=self.settings.acme_directory, email=self.settings.acme_email or None,
                ca_bundle=str(self.settings.acme_ca_bundle) if self.settings.acme_ca_bundle else None,
                on_event=self._certificate_event, **_test_clock())
        return self.certificates

    async def _install_issued(self, host: str, cert_pem: bytes, key_pem: bytes) -> None:
        if self.front is None:
            raise OperationFailed("the shared listeners are not running")
        await self.front.set_certificate(host, cert_pem, key_pem)
        self._installed.add(host)

    def _certificate_event(self, host: str, kind: str, detail: str) -> None:
        # The id orders events across edge restarts too: an agent records those newer than its last. Kept on
        # disk as well (rare, small), so that an edge killed before an agent read one still has it.
        self.certificate_events.append({"id": time.time_ns(), "at": time.time(), "host": host, "kind": kind,
                                        "detail": detail})
        try:
            write_atomically(self._events_file, json.dumps(list(self.certificate_events)) + "\n")
        except OSError as exc:
            log.warning("cannot save %s: %s", self._events_file, exc)

    @property
    def _events_file(self) -> Path:
        return self.home.root / "acme" / "events.json"

    def _saved_events(self) -> list[dict[str, Any]]:
        try:
            raw = json.loads(self._events_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s): earlier certificate events are dropped", self._events_file, exc)
            return []
        return [e for e in raw if isinstance(e, dict) and {"id", "host", "kind", "detail"} <= e.keys()] \
            if isinstance(raw, list) else []

    def _acme_status(self, route: dict[str, Any]) -> dict[str, Any] | None:
        if route.get("tls") != "auto" or self.certificates is None:
            return None
        return self.certificates.status().get(str(route["host"]).lower())

    def _router_certificates(self, state: RouteState) -> dict[str, Any]:
        """For the router's agent: its `tls: auto` hosts' states, and the certificate events of its hosts."""
        hosts = {str(r["host"]).lower() for r in state.routes}
        status = {s["host"]: s for r in state.routes if (s := self._acme_status(r)) is not None}
        return {"certificates": status,
                "certificate_events": [e for e in self.certificate_events if e["host"] in hosts]}

    def certificate_state(self, route: dict[str, Any]) -> str:
        """What `ingot status` says of a route's certificate."""
        if route.get("tls") == "off":
            return "none (plain HTTP)"
        acme = self._acme_status(route)
        if acme is not None:
            return _acme_text(acme)
        for host in host_candidates(str(route["host"])):
            path = self._certificate_path(host)
            if path.is_file():
                return _expiry(path.read_bytes())
        return "waiting for ACME" if route.get("tls") == "auto" else "missing"

    @staticmethod
    def _in_flight(router: Router, release: str) -> int:
        stats = router.stats().get(release)
        return stats.in_flight if stats is not None else 0

    # ---- protocol ------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = await self._answer(line)
                writer.write(encode(answer))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = decode(line)
            return {"ok": True, **await self._dispatch(request)}
        except IngotError as exc:
            return {"ok": False, "error": exc.message, "details": exc.details, "exit_code": exc.exit_code}
        except (KeyError, TypeError, ValueError) as exc:
            return {"ok": False, "error": f"bad edge request: {exc}", "details": [], "exit_code": 2}
        except Exception as exc:  # the edge must outlive any one bad request
            log.exception("edge request failed")
            return {"ok": False, "error": f"edge error: {type(exc).__name__}: {exc}", "details": [], "exit_code": 1}

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"pid": os.getpid(), "version": __version__, "routers": len(self.routers)}
        if op == "list":
            return self.listing()
        router_id = str(request["id"])
        if op == "stats":
            return self.stats(router_id)
        async with self._lock(router_id):
            match op:
                case "ensure":
                    return await self.ensure(router_id, str(request["owner"]), str(request["name"]),
                                             str(request["kind"]), _address(request["listen"]),
                                             request.get("clients"), request.get("routes"),
                                             request.get("certificates"))
                case "set_backends":
                    return await self.set_backends(router_id, str(request["release"]),
                                                   [_address(a) for a in request["addrs"]])
                case "set_weights":
                    return await self.set_weights(router_id, {str(k): int(v) for k, v in request["weights"].items()})
                case "drain":
                    return await self.drain(router_id, str(request["release"]), float(request["timeout"]))
                case "drain_backends":
                    return await self.drain_backends(router_id, str(request["release"]),
                                                     [_address(a) for a in request["addrs"]],
                                                     float(request["timeout"]))
                case "set_health":
                    return await self.set_health(router_id, dict(request["check"]))
                case "set_clients":
                    return await self.set_clients(router_id, dict(request["clients"]))
                case "remove_release":
                    return await self.remove_release(router_id, str(request["release"]))
                case "hold":
                    return await self.hold(router_id, float(request["seconds"]))
                case "release_hold":
                    return await self.release_hold(router_id)
                case "maintenance":
                    return await self.maintenance(router_id, bool(request["on"]), int(request.get("retry_after") or 0),
                                                  request.get("page"), request.get("since"))
                case "release":
                    return await self.release(router_id)
        raise UserInputError(f"unknown edge operation {op!r}")


def _expiry(pem: bytes) -> str:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return "unreadable"
    return f"valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"


def _test_clock() -> dict[str, Any]:
    """The `clock` argument of the certificate manager when TEST_CLOCK_FILE is set (tests only), else none."""
    path = os.environ.get(TEST_CLOCK_FILE)
    if not path:
        return {}
    from datetime import UTC, datetime, timedelta

    def clock() -> datetime:
        try:
            ahead = float(Path(path).read_text().strip() or 0)
        except (OSError, ValueError):
            ahead = 0.0
        return datetime.now(UTC) + timedelta(seconds=ahead)

    log.warning("%s is set: the ACME clock is a test's (%s)", TEST_CLOCK_FILE, path)
    return {"clock": clock}


def _acme_text(status: dict[str, Any]) -> str:
    """A `tls: auto` host's certificate in a few words: `valid until ...`, `failed: <why>, retry at ...`."""
    def when(iso: Any) -> str:
        return str(iso).replace("T", " ").replace("+00:00", " UTC") if iso else "?"

    state = status["state"]
    if state == "valid":
        return f"valid until {when(status['not_after'])}"
    if state == "failed":
        retry = f", retry at {when(status['next_attempt'])}" if status.get("next_attempt") else ", not retried"
        serving = f"; the old one serves until {when(status['not_after'])}" if status.get("not_after") else ""
        return f"failed: {status.get('last_error')}{retry}{serving}"
    if state == "renewing":
        return f"renewing (valid until {when(status['not_after'])})"
    return "pending (ACME order)"


def run_edge(home: EdgeHome, *, persistent: bool = False) -> None:
    home.prepare()
    with pidfile.holding(home.pidfile, f"an edge for {home.root}"):
        install_fast_loop()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.info("open files limit: %d", raise_open_files_limit())
        asyncio.run(Edge(home, persistent=persistent).run())
