"""The edge: the machine's data plane, one long-lived process serving every project's routers.

Agents (the control plane, one per project) drive it over a local control socket (`control.sock`,
0600 in a 0700 home: only its owner, root in production, may connect). What they send is
declarative state per router: its listen address and kind, the pool of upstream addresses of each
release, the weights, the releases being drained. The edge writes that state to `state.json`
(atomically) after every change, before it answers, so an edge that restarts serves the same
routers again without asking anyone. It never needs an agent to keep serving: an agent that is
killed, restarted, stopped or overloaded changes nothing here.

Router ids are chosen by the agents (`<state dir>#<environment>/<service>@<host>:<port>`): the owner
part keeps projects apart, and one address is served by one router only; a second claim on it is
refused naming the holder.

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
from dataclasses import asdict, dataclass, field
from typing import Any

from ingot import __version__, pidfile
from ingot.agent.protocol import decode, encode
from ingot.edge.home import EdgeHome
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
)
from ingot.routers.builtin import BuiltinRouter, install_fast_loop
from ingot.routers.haproxy import HAProxyRouter, stop_leftover_haproxy

log = logging.getLogger("ingot.edge")
KINDS = ("builtin", "haproxy")


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
    maintenance: dict[str, Any] | None = None  # {"retry_after": seconds, "page": HTML or None, "since": time}

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
            maintenance=dict(raw["maintenance"]) if raw.get("maintenance") else None,
        )


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
        for router_id, router in self.routers.items():
            self.fds.drop(router_id)
            with contextlib.suppress(Exception):
                await router.stop()
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()

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
            try:
                await self._build(state)
            except IngotError as exc:
                # Kept: the agent's next ensure tries again, and says why it fails.
                log.error("could not restore router %s on %s:%s: %s", state.name, *state.listen, exc.message)
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
        if state.maintenance is not None and isinstance(router, BuiltinRouter):
            router.set_maintenance(int(state.maintenance["retry_after"]), state.maintenance.get("page"))
        try:
            await router.start()
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
        if state.kind == "haproxy":
            # Adopts the haproxy an earlier edge left serving, if there is one that answers.
            return HAProxyRouter(state.listen, name=state.name, workdir=self.home.router_dir(state.id),
                                 clients=ClientPolicy.from_dict(state.clients))
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
                     clients: dict[str, Any] | None = None) -> dict[str, Any]:
        if kind not in KINDS:
            raise UserInputError(f"unknown router kind {kind!r}; expected one of {', '.join(KINDS)}")
        state = self.states.get(router_id)
        if state is not None and router_id in self.routers:
            if state.kind != kind:
                raise UserInputError(f"router {state.name} on {state.listen[0]}:{state.listen[1]} is {state.kind}, "
                                     f"not {kind}")
            if clients is not None and ClientPolicy.from_dict(clients).as_dict() != state.clients:
                await self.set_clients(router_id, clients)  # the spec changed while its agent was away
            return {"listen": list(self.routers[router_id].listen_address), "created": False}
        for other in self.states.values():
            if other.id != router_id and other.listen == listen and listen[1] != 0:
                raise OperationFailed(
                    f"{listen[0]}:{listen[1]} is already served by this machine's edge for {other.name}",
                    details=[f"its state directory: {other.owner}", "choose another `router.listen` address"])
        if state is None:
            state = RouteState(id=router_id, owner=owner, name=name, kind=kind, listen=listen)
        state.clients = ClientPolicy.from_dict(clients).as_dict()  # checked here: a bad one is refused
        router = await self._build(state)
        state.listen = router.listen_address  # the bound port, so that a restart binds the same one
        self.states[router_id] = state
        self._persist()
        return {"listen": list(router.listen_address), "created": True}

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
        """New requests wait in the router (strategy.hold); not persisted: an edge restart ends a hold."""
        state, router = self._router(router_id)
        if not can_hold(router):
            raise UserInputError(f"router {state.name} is {state.kind}: it cannot hold requests (strategy.hold)")
        await router.hold(seconds)  # type: ignore[attr-defined]
        return {}

    async def maintenance(self, router_id: str, on: bool, retry_after: int, page: str | None,
                          since: str | None) -> dict[str, Any]:
        """Answer every request 503 + Retry-After (or serve again); persisted, so a restart keeps it."""
        state, router = self._router(router_id)
        if not isinstance(router, BuiltinRouter):
            raise UserInputError(
                f"router {state.name} is {state.kind}: maintenance mode needs the built-in router",
                details=["HAProxy would need a reload to answer every request itself; use router.kind builtin"])
        was = state.maintenance
        state.maintenance = {"retry_after": retry_after, "page": page, "since": since} if on else None
        router.set_maintenance(retry_after if on else None, page)
        self._persist()
        return {"maintenance": state.maintenance, "was": bool(was)}

    async def release_hold(self, router_id: str) -> dict[str, Any]:
        _, router = self._router(router_id)
        held = await router.release_hold() if can_hold(router) else 0  # type: ignore[attr-defined]
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
        self.states.pop(router_id, None)
        self._persist()
        self.fds.drop(router_id)  # its listen queue goes now, not when the supervisor ends
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
                "backends": router.backend_health()}

    def listing(self) -> dict[str, Any]:
        routes = []
        for state in self.states.values():
            router = self.routers.get(state.id)
            routes.append({
                "id": state.id, "name": state.name, "owner": state.owner, "kind": state.kind,
                "listen": f"{state.listen[0]}:{state.listen[1]}", "serving": router is not None,
                "weights": router.weights() if router else state.weights,
                "pools": {r: [f"{h}:{p}" for h, p in pool] for r, pool in state.pools.items()},
                "maintenance": {k: v for k, v in state.maintenance.items() if k != "page"}
                if state.maintenance else None,
            })
        return {"pid": os.getpid(), "version": __version__, "home": str(self.home.root), "routes": routes}

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
                                             request.get("clients"))
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


def run_edge(home: EdgeHome, *, persistent: bool = False) -> None:
    home.prepare()
    with pidfile.holding(home.pidfile, f"an edge for {home.root}"):
        install_fast_loop()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.info("open files limit: %d", raise_open_files_limit())
        asyncio.run(Edge(home, persistent=persistent).run())
