"""The agent's side of the edge: a `Router` that lives in the edge process, driven over its socket.

`EdgeRouter` keeps the `Router` contract (routers/base.py) with every mutation forwarded to the edge
and answered there once applied and persisted. Reads (`stats`, `weights`) come from a poll every
`POLL_INTERVAL`, as HAProxy's do. `detach()` lets go of a router without touching its traffic: that is
what an agent does when it stops, so its instances go on serving through the edge.

The edge is started on demand, under ingot's supervisor, by the first caller that finds it missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ingot.agent.protocol import decode, encode
from ingot.edge.front import Route
from ingot.edge.home import EdgeHome
from ingot.edge.settings import EdgeSettings
from ingot.errors import OperationFailed, UserInputError
from ingot.routers.base import Address, ClientPolicy, HealthCheck, ReleaseStats
from ingot.supervision import running_supervisor

log = logging.getLogger("ingot.edge.client")

POLL_INTERVAL = 0.25
START_TIMEOUT = 20.0
CALL_TIMEOUT = 30.0  # beyond any drain's own timeout, which is added to it


class EdgeUnavailable(OperationFailed):
    pass


AGAIN_ATTEMPTS = 4  # an idempotent call (`again`) is made this many times at most while the edge keeps dying


class EdgeGone(OperationFailed):
    """The edge closed the connection before answering: it died (or was killed) during the call."""


def _raise_for(answer: dict[str, Any]) -> dict[str, Any]:
    if answer.get("ok"):
        return answer
    kind = UserInputError if answer.get("exit_code") == 2 else OperationFailed
    raise kind(str(answer.get("error")), details=list(answer.get("details") or []))


def call_sync(home: EdgeHome, op: str, timeout: float = 5.0, **arguments: Any) -> dict[str, Any]:
    """One request to the edge from synchronous code (the CLI, start-up checks)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(home.control_socket))
        except OSError as exc:
            raise EdgeUnavailable(f"the edge ({home.root}) is not running") from exc
        sock.sendall(encode({"op": op, **arguments}))
        line = sock.makefile("rb").readline()
    if not line:
        raise EdgeUnavailable(f"the edge closed the connection before answering; see {home.log}")
    return _raise_for(decode(line))


def edge_alive(home: EdgeHome) -> bool:
    try:
        call_sync(home, "ping", timeout=2.0)
    except (OperationFailed, OSError, ValueError):
        return False
    return True


def ensure_edge(home: EdgeHome) -> None:
    """Start the machine's edge under ingot's supervisor unless it answers already."""
    if edge_alive(home):
        return
    EdgeSettings.load(home.root)  # bad settings are the caller's to hear (exit 2), not only the edge's log
    # A supervisor still running is either starting its edge again (after a crash) or ending with it (a
    # SIGTERM): wait for whichever comes first, and start a new edge only once the old one is gone.
    deadline = time.monotonic() + START_TIMEOUT
    while running_supervisor(home.supervisor_pidfile) is not None and time.monotonic() < deadline:
        if edge_alive(home):
            return
        time.sleep(0.02)
    home.prepare()
    with open(home.log, "ab") as log:
        os.chmod(home.log, 0o600)
        child = subprocess.Popen(
            [sys.executable, "-m", "ingot.supervision", "--pidfile", str(home.supervisor_pidfile),
             "ingot.edge.__main__:main", "--", "serve", "--home", str(home.root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "INGOT_DAEMON": "1"},
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if edge_alive(home):
            return
        if child.poll() is not None and not edge_alive(home):
            break
        time.sleep(0.02)
    try:
        tail = home.log.read_text(errors="replace").splitlines()[-15:]
    except OSError:
        tail = []
    raise OperationFailed("the edge (the data plane) did not start", details=[f"its log ({home.log}):", *tail])


def release_owned(home: EdgeHome, owner: str, environment: str | None = None) -> list[str]:
    """Release the edge's routers of one state directory (and environment): for `down` without an agent."""
    if not edge_alive(home):
        return []
    released = []
    for route in call_sync(home, "list")["routes"]:
        if route["owner"] == owner and (environment is None or f"#{environment}/" in route["id"]):
            call_sync(home, "release", timeout=30.0, id=route["id"])
            released.append(route["name"])
    return released


class EdgeClient:
    """Asynchronous requests to the edge, starting it again if it is gone (it may have restarted)."""

    def __init__(self, home: EdgeHome) -> None:
        self.home = home

    async def call(self, op: str, wait: float = CALL_TIMEOUT, *, again: bool = False,
                   **arguments: Any) -> dict[str, Any]:
        """`wait`: how long the answer may take (a drain waits for its own timeout first). `again`: the call
        is idempotent and is made once more if the edge died while answering it (its restart restored its
        state, a hold included), rather than failing the operation that made it."""
        attempts = AGAIN_ATTEMPTS if again else 1
        for attempt in range(1, attempts + 1):
            try:
                try:
                    return await self._call(op, wait, arguments)
                except EdgeUnavailable:
                    await asyncio.to_thread(ensure_edge, self.home)
                    return await self._call(op, wait, arguments)
            except EdgeGone:
                if attempt == attempts:
                    raise
                log.warning("the edge died during `%s`; calling it again once it is back", op)
                await asyncio.sleep(0.1 * attempt)  # its supervisor starts it again within a second
        raise AssertionError("unreachable")

    async def _call(self, op: str, timeout: float, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.home.control_socket), limit=2**22)
        except OSError as exc:
            raise EdgeUnavailable(f"the edge ({self.home.root}) is not running") from exc
        try:
            writer.write(encode({"op": op, **arguments}))
            async with asyncio.timeout(timeout):
                line = await reader.readline()
        except ConnectionError as exc:
            raise EdgeGone(f"the edge did not answer `{op}` ({exc}); see {self.home.log}") from exc
        except TimeoutError as exc:
            raise OperationFailed(f"the edge did not answer `{op}` (timed out); see {self.home.log}") from exc
        finally:
            writer.close()
        if not line:
            raise EdgeGone(f"the edge closed the connection during `{op}`; see {self.home.log}")
        return _raise_for(decode(line))


def routes_request(routes: tuple[Route, ...]) -> dict[str, Any]:
    """The `routes` and `certificates` (PEM, read here: the edge may not see the agent's files) of `ensure`."""
    certificates: dict[str, dict[str, str]] = {}
    for route in routes:
        if route.tls == "files" and route.cert and route.key:
            try:
                certificates[route.host] = {"cert": Path(route.cert).read_text(), "key": Path(route.key).read_text()}
            except (OSError, UnicodeDecodeError) as exc:
                raise UserInputError(f"cannot read the certificate of {route.host}: {exc}") from None
    return {"routes": [r.as_dict() for r in routes], "certificates": certificates}


class EdgeRouter:
    """One router in the edge, seen through the `Router` interface."""

    def __init__(self, client: EdgeClient, *, router_id: str, owner: str, name: str, kind: str,
                 listen: Address, clients: ClientPolicy | None = None, routes: tuple[Route, ...] = ()) -> None:
        self.client = client
        self.clients = clients or ClientPolicy()
        self.routes = routes  # on the machine's shared listeners
        self.id = router_id
        self.owner = owner
        self.name = name
        self.kind = kind
        self._listen = listen
        self._weights: dict[str, int] = {}
        self._stats: dict[str, ReleaseStats] = {}
        self._backends: dict[str, dict[str, str]] = {}
        self._cut: dict[str, int | None] = {}
        self._holds = kind == "builtin"  # until the edge says (HAProxy: if built with Lua)
        # What the edge's certificate manager did for this router's hosts (newest last), for the agent's ledger.
        self.certificate_events: list[dict[str, Any]] = []
        self._poller: asyncio.Task[None] | None = None

    @property
    def listen_address(self) -> Address:
        return self._listen

    async def start(self) -> None:
        """Make the edge serve this router (a no-op if it does already: an agent restart adopts it)."""
        answer = await self.client.call("ensure", id=self.id, owner=self.owner, name=self.name, kind=self.kind,
                                        listen=list(self._listen), clients=self.clients.as_dict(),
                                        **await asyncio.to_thread(routes_request, self.routes))
        host, port = answer["listen"]
        self._listen = (str(host), int(port))
        self._holds = bool(answer.get("holds", self.kind == "builtin"))  # an edge from before it said
        await self.refresh()
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def stop(self) -> None:
        """Stop serving: the edge closes the listener and forgets the router."""
        await self.detach()
        await self.client.call("release", id=self.id)

    async def detach(self) -> None:
        """Stop watching the router; the edge goes on serving it exactly as it is."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def set_backends(self, release: str, addrs: list[Address]) -> None:
        await self.client.call("set_backends", id=self.id, release=release, addrs=[list(a) for a in addrs])

    async def set_weights(self, weights: dict[str, int]) -> None:
        for name, weight in weights.items():
            if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
                raise ValueError(f"weight of release {name!r} must be an integer >= 0, got {weight!r}")
        await self.client.call("set_weights", id=self.id, weights=weights, again=True)
        self._weights = {**{r: 0 for r in self._weights}, **weights}

    async def drain(self, release: str, timeout: float) -> bool:
        answer = await self.client.call("drain", wait=CALL_TIMEOUT + timeout, id=self.id, release=release,
                                        timeout=timeout)
        cut = answer.get("cut")
        self._cut[release] = int(cut) if cut is not None else None
        return bool(answer["drained"])

    def drain_cut(self, release: str) -> int | None:
        """The edge router's answer to the last `drain` of `release` (None: HAProxy cannot tell)."""
        return self._cut.get(release)

    @property
    def holds(self) -> bool:
        """Whether the edge's router can hold requests (strategy.hold), as its `ensure` said."""
        return self._holds

    async def hold(self, seconds: float) -> None:
        await self.client.call("hold", id=self.id, seconds=seconds, again=True)

    async def release_hold(self) -> int:
        answer = await self.client.call("release_hold", wait=CALL_TIMEOUT + 60.0, id=self.id, again=True)
        return int(answer.get("held") or 0)

    async def drain_backends(self, release: str, addrs: list[Address], timeout: float) -> bool:
        answer = await self.client.call("drain_backends", wait=CALL_TIMEOUT + timeout, id=self.id,
                                        release=release, addrs=[list(a) for a in addrs], timeout=timeout)
        cut = answer.get("cut")
        self._cut[release] = int(cut) if cut is not None else None
        return bool(answer["drained"])

    async def set_health(self, check: HealthCheck) -> None:
        await self.client.call("set_health", id=self.id, check=asdict(check))

    async def set_routes(self, routes: tuple[Route, ...]) -> None:
        """The service's routes, from the spec of the deploy; refused (OperationFailed) naming the holder of a
        host+path another service has. Certificate files are read again each time (they may be renewed)."""
        if routes != self.routes or any(r.tls == "files" for r in routes):
            answer = await self.client.call("ensure", id=self.id, owner=self.owner, name=self.name,
                                            kind=self.kind, listen=list(self._listen), clients=self.clients.as_dict(),
                                            **await asyncio.to_thread(routes_request, routes))
            self._holds = bool(answer.get("holds", self._holds))
            self.routes = routes

    async def set_clients(self, clients: ClientPolicy) -> None:
        """The limits on the router's clients, from the spec of the deploy (a no-op when unchanged)."""
        if clients != self.clients:
            await self.client.call("set_clients", id=self.id, clients=clients.as_dict())
            self.clients = clients

    def backend_health(self) -> dict[str, dict[str, str]]:
        return {r: dict(b) for r, b in self._backends.items()}

    async def remove_release(self, release: str) -> None:
        await self.client.call("remove_release", id=self.id, release=release)
        self._weights.pop(release, None)
        self._stats.pop(release, None)

    def stats(self) -> dict[str, ReleaseStats]:
        return dict(self._stats)

    def weights(self) -> dict[str, int]:
        return dict(self._weights)

    async def refresh(self) -> dict[str, ReleaseStats]:
        answer = await self.client.call("stats", id=self.id)
        self._weights = {str(k): int(v) for k, v in answer["weights"].items()}
        self._stats = {str(r): ReleaseStats(**s) for r, s in answer["stats"].items()}
        self._backends = answer.get("backends", {})
        self.certificate_events = list(answer.get("certificate_events", []))
        return self.stats()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                await self.refresh()
            except (OperationFailed, OSError, ValueError, KeyError):
                pass  # the edge is restarting or the router is being restored: the next poll asks again
            except Exception:  # a poll that dies would leave a stopped edge unstarted by this agent for good
                log.exception("polling the edge failed; polling on")
