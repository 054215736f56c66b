"""`HAProxyRouter`: the `Router` interface with a real HAProxy (2.6) as the data plane.

Design. One haproxy process per router, started in master-worker mode as a child of the caller,
with a configuration written once (see `haproxy_config`) and never reloaded. Python binds the
listening socket itself and hands it to haproxy (`bind fd@N`), so "address in use" is reported
exactly and port 0 works. The configuration has ONE backend with `SLOTS` server slots
(`server-template`, disabled); every instance of every release takes a free slot, filled at runtime
(`set server releases/s<n> addr A port P`, then `weight` and `state`), and the slot → release map
(`add map`/`del map`) names its release. Slots rather than `add server`: haproxy 2.6 never reuses a
backend connection of a server added at runtime (`connect` = `req_tot`, about a third of the
throughput), and does for declared ones. When every slot is taken, further instances are added with
`add server` (named `x<n>`) with a warning: they serve, without connection reuse.
One backend rather than one per release because haproxy cannot create backends at runtime and has
no weighted choice between backends (it would take a pre-declared set of backends and a map of
random ranges); inside one backend, `balance roundrobin` already splits smoothly by server weight
and picks up weight changes at once. The release split is made exact by giving each server the
release's weight divided by the size of its pool (see `server_weights`). The release that answered
comes back as `X-Ingot-Release`, looked up in the map by the server's name. A slot's address changes
only while it is free: a new instance takes a free slot, and a server that leaves its pool is set to
drain and, once it has no session left, to maintenance and freed (an added server is deleted). haproxy
drops a server's idle connections when its address changes (checked on 2.6), so a connection to an old
instance is never reused for a new one. A slot's counters go on across occupants: the router keeps each
instance's starting counters (`_Server.base`) and reports the difference.

Every runtime command goes over the admin socket from Python, one command per connection.

Adoption. haproxy runs in a session of its own and does not die with its owner: an owner (the
edge) that is killed or crashes leaves it serving. `start()` in a workdir where a haproxy of ours
still runs takes it over instead of starting another: it is ours when the pid in `owner.json`
(written at spawn) is the one in haproxy's own pidfile, that process's command line names this
workdir's config, it listens where this router should (`owner.json` again), and the worker that
answers on the admin socket is that master's child. The router then reads back the servers
(`show servers state`: slots, addresses, weights, drain/maintenance; `show map`: which slots hold
which release, the others are free) and reconciles them with the
pools and weights it was given before `start()`, with runtime commands only, and none at all when
nothing changed. Only a haproxy that does not answer in time is replaced (killed, started anew);
`stop()` stops an adopted one like its own. Counters go on from what haproxy has (those of servers
deleted before the takeover are lost). An ejection survives the takeover as far as haproxy shows
it: a server of a weighted release left at weight 0 is taken as ejected until probes bring it back.

Maintenance (`set_maintenance`). The backend answers every request 503 itself while its entry in a map
(`maint.map`, keyed by backend name: a front's backends share one) holds the Retry-After and the page, set
with `set map` (or `add map`) and removed with `del map`: on and off at once, no reload. The router keeps
the value and gives it to a haproxy it starts again or adopts, like its servers.

Respawn. A haproxy that dies under a running router (a crash, an OOM kill) is seen by the background
poll and started again on the same address with the router's pools and weights; if it cannot start, again
after a backoff. Its listening socket died with it, so clients are refused in between (about a second).

Health (`set_health`). ingot's own probes and bookkeeping (`ingot.routers.health`, the same code
as the builtin router's) drive haproxy, rather than haproxy's `check` on the servers:

- The probe path of haproxy's checks (`option httpchk`, `http-check send`) lives in the
  configuration, per backend, and the configuration is written once and never reloaded, while
  `set_health` comes (and may change) at runtime, and one backend holds every release.
- haproxy answers 503 once every server is down; the contract is to fail open instead.
- `observe layer7` counts 5xx as failures, which the contract does not (see `HealthCheck`), and
  `observe layer4` misses a backend that accepts and then closes or never answers.
- So both routers eject for the same reasons, say so in the same words in `backend_health()`,
  and keep ejection apart from weights and drains.

An ejected server gets weight 0 (and stays `ready`, so its requests in flight finish and drains
and retirement keep their meaning): the release's weight is spread over its other servers, and a
release with none left gives its share to the other weighted releases, as on the builtin router.
Probes run in this process every `interval`; a failed probe ejects within milliseconds (one
`set server` per changed server). Passive signals come from the `show stat` poll (every
`POLL_INTERVAL`): a server's failed attempts since the previous poll, when it answered nothing in
between, count as failed requests in a row (see `passive_delta`). So passive ejection takes up to
one poll longer than on the builtin router; a server that answered anything during a poll starts
its count again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import shutil
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from ingot.errors import OperationFailed, UserInputError
from ingot.routers.base import Address, ClientPolicy, HealthCheck, ReleaseStats
from ingot.routers.haproxy_config import (
    BACKEND,
    OVERFLOW_PREFIX,
    RELEASE_NAME,
    SLOTS,
    Timeouts,
    haproxy_has_lua,
    is_slot,
    maintenance_value,
    render_config,
    slot_names,
    write_hold_files,
)
from ingot.routers.health import BackendHealth, HealthMonitor, address_key, fail_open

log = logging.getLogger("ingot.routers.haproxy")

MAX_SERVER_WEIGHT = 256  # haproxy's limit for one server
POLL_INTERVAL = 0.5  # how often `stats()` is refreshed in the background (and haproxy seen to be alive)
# A haproxy that dies is started again at once; if that fails, again after 0.5 s doubling up to 30 s.
RESPAWN_BACKOFF, RESPAWN_BACKOFF_MAX = 0.5, 30.0
DRAIN_POLL = 0.02  # how often `drain` looks at the sessions of the release
START_TIMEOUT = 10.0  # for the admin socket to answer
ADOPT_TIMEOUT = 2.0  # for a running haproxy to answer before it is replaced
STOP_TIMEOUT = 5.0  # for haproxy to exit on SIGTERM before it is killed
# Latency samples haproxy averages over (its `rtime`, `qtime`, `ctime` are over the last 1024).
HAPROXY_AVERAGE_WINDOW = 1024
# p99 is the largest time seen over this many recent polls in which the release served requests.
PEAK_WINDOW = 20
# A Unix socket path must fit `sun_path` (108 bytes, with the terminating NUL).
SOCKET_PATH_MAX = 107


class RuntimeAPI:
    """haproxy's runtime API over its admin socket: one command per connection, answer until EOF."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    async def run(self, command: str, payload: str | None = None) -> str:
        """`payload`: the multi-line argument of commands like `set ssl cert F <<` (it ends at an empty line)."""
        line = command.encode("ascii") + b"\n"
        if payload is not None:
            line = command.encode("ascii") + b" <<\n" + payload.strip("\n").encode("ascii") + b"\n\n"
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_unix_connection(str(self.path))
            try:
                writer.write(line)
                await writer.drain()
                return (await reader.read()).decode("utf-8", "replace")
            finally:
                writer.close()

    async def expect(self, command: str, ok: str = "") -> None:
        """Run `command`; raise if haproxy answers anything but `ok` (its success message)."""
        answer = (await self.run(command)).strip()
        if answer != ok:
            raise OperationFailed(f"haproxy refused `{command}`: {answer or '(no answer)'}")

    async def expect_in(self, command: str, needle: str, payload: str | None = None) -> str:
        """Run `command`; raise unless haproxy's answer contains `needle` (commands whose success message varies)."""
        answer = (await self.run(command, payload)).strip()
        if needle not in answer:
            raise OperationFailed(f"haproxy refused `{command}`: {answer or '(no answer)'}")
        return answer

    async def set_addr(self, server: str, host: str, port: int) -> None:
        """`set server <backend/server> addr H port P`, whose success answer says what changed."""
        command = f"set server {server} addr {host} port {port}"
        answer = (await self.run(command)).strip()
        if answer and "by 'stats socket command'" not in answer and not answer.startswith("no need to change"):
            raise OperationFailed(f"haproxy refused `{command}`: {answer}")


# ---- pure helpers ---------------------------------------------------------------------------------


def server_weights(release_weights: Mapping[str, int], pool_sizes: Mapping[str, int]) -> dict[str, int]:
    """The weight each server of a release gets, so that traffic splits by RELEASE weight.

    A release of weight w with n servers gets w/n per server. The exact ratio is used when it fits
    haproxy's 1..256 (e.g. 50/50 over 1 and 3 servers gives 3 and 1); otherwise the ratios are
    scaled so the largest is 256 and rounded, never below 1 for a weighted release: the split is
    then within about 1/256 of the target, a tiny release gets a little more than its due.
    Releases with weight 0 or no server are left out.
    """
    active = {r: w for r, w in release_weights.items() if w > 0 and pool_sizes.get(r, 0) > 0}
    if not active:
        return {}
    common = math.lcm(*(pool_sizes[r] for r in active))
    exact = {r: w * (common // pool_sizes[r]) for r, w in active.items()}
    divisor = math.gcd(*exact.values())
    exact = {r: v // divisor for r, v in exact.items()}
    top = max(exact.values())
    if top <= MAX_SERVER_WEIGHT:
        return exact
    return {r: max(1, round(v * MAX_SERVER_WEIGHT / top)) for r, v in exact.items()}


def parse_stat(csv_text: str) -> dict[str, dict[str, int]]:
    """`show stat` CSV -> {server name: {column: value}}; empty and non-numeric cells become 0."""
    lines = [line for line in csv_text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise OperationFailed(f"haproxy answered `show stat` with {csv_text[:200]!r}")
    columns = lines[0][2:].split(",")
    rows: dict[str, dict[str, int]] = {}
    for line in lines[1:]:
        cells = dict(zip(columns, line.split(","), strict=False))
        rows[cells["svname"]] = {k: int(v) if v.isdigit() else 0 for k, v in cells.items()}
    return rows


def parse_map(text: str) -> dict[str, str]:
    """`show map <file>` -> {key: value}; each line is `<entry id> <key> <value>`."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = line.split()
        if len(cells) != 3 or not cells[0].startswith("0x"):
            raise OperationFailed(f"haproxy answered `show map` with {text[:200]!r}")
        entries[cells[1]] = cells[2]
    return entries


# Cumulative `show stat` columns: a slot's go on across occupants, so each instance's are taken from its start.
COUNTER_COLUMNS = frozenset((
    "stot", "bin", "bout", "dreq", "dresp", "ereq", "econ", "eresp", "wretr", "wredis", "chkfail", "chkdown",
    "lbtot", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other", "cli_abrt", "srv_abrt",
    "req_tot", "connect", "reuse",
))


def counters_of(row: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in row.items() if k in COUNTER_COLUMNS}


def since(row: Mapping[str, int], base: Mapping[str, int]) -> dict[str, int]:
    """`row` with its cumulative counters counted from `base` (a slot's counters when its occupant took it)."""
    return {k: v - base.get(k, 0) if k in COUNTER_COLUMNS else v for k, v in row.items()}


@dataclass(frozen=True)
class ServerState:
    """One server as `show servers state` reports it."""

    name: str
    addr: Address
    weight: int
    state: str  # ready | drain | maint


def parse_servers_state(text: str) -> list[ServerState]:
    """`show servers state <backend>` -> its servers; admin-state bits: 0x01 maintenance, 0x08 drain."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next((line for line in lines if line.startswith("# ")), None)
    if header is None:
        raise OperationFailed(f"haproxy answered `show servers state` with {text[:200]!r}")
    columns = header[2:].split()
    servers = []
    for line in lines:
        if line.startswith("#") or line.strip() == "1":
            continue
        cells = dict(zip(columns, line.split(), strict=False))
        admin = int(cells["srv_admin_state"])
        state = "maint" if admin & 0x01 else "drain" if admin & 0x08 else "ready"
        servers.append(ServerState(cells["srv_name"], (cells["srv_addr"], int(cells["srv_port"])),
                                   int(cells["srv_uweight"]), state))
    return servers


def row_requests(row: Mapping[str, int]) -> int:
    """Requests a server took: responses it sent, plus those haproxy answered with an error for it.

    `req_tot` counts responses received from the server (including ones cut off, `srv_abrt`);
    a connection failure after all retries is `econ`, an invalid or missing response is `eresp`.
    """
    return row.get("req_tot", 0) + row.get("econ", 0) + max(0, _unretried(row) - row.get("srv_abrt", 0))


def row_errors(row: Mapping[str, int]) -> int:
    """5xx from the server, plus the 502/503 haproxy made for it and responses the server cut off."""
    return row.get("hrsp_5xx", 0) + row.get("econ", 0) + _unretried(row)


def _unretried(row: Mapping[str, int]) -> int:
    """Invalid or missing responses (`eresp`) less those haproxy replayed (`wretr`): a reused connection the
    backend closed just as the request went out is retried elsewhere and is no error the client saw."""
    return max(0, row.get("eresp", 0) - row.get("wretr", 0))


def tunnel_sessions(show_sess_all: str, servers: set[str]) -> list[str]:
    """The sessions (their ids for `shutdown session`) of `show sess all` that are tunnels on `servers`: a
    connection the server switched to another protocol (status 101: a WebSocket)."""
    found: list[str] = []
    session: str | None = None
    server: str | None = None
    tunnel = False
    for line in [*show_sess_all.splitlines(), "0x:"]:
        if line.startswith("0x"):
            if session is not None and tunnel and server in servers:
                found.append(session)
            session, server, tunnel = line.split(":", 1)[0], None, False
            continue
        text = line.strip()
        if text.startswith("server="):
            server = text[len("server="):].split(" ", 1)[0]
        elif text.startswith("txn=") and " status=101 " in f"{text} ":
            tunnel = True
    return found


def row_busy(row: Mapping[str, int]) -> int:
    """Requests on the server now (`scur`) or queued for it (`qcur`)."""
    return row.get("scur", 0) + row.get("qcur", 0)


def row_latency_avg(row: Mapping[str, int]) -> int:
    """Average ms until response headers over haproxy's last 1024 requests: queue + connect + response."""
    return row.get("qtime", 0) + row.get("ctime", 0) + row.get("rtime", 0)


# Responses a server sent, by class: any of them is an answer (a 5xx too).
ANSWER_COLUMNS = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")


def passive_delta(before: Mapping[str, int], after: Mapping[str, int]) -> tuple[int, int, str]:
    """(failed attempts, answers, why) of one server between two polls of its counters.

    A failed attempt shows as `eresp` (closed without answering, no response head in time, a
    broken response), `econ` (connect failed on the last retry) or `wredis` (the request moved to
    another server: after a refused connect that is the only trace; after an empty answer `eresp`
    has it already), so the larger of `eresp + econ` and `wredis` is the number of failed attempts.
    """

    def delta(column: str) -> int:
        return max(0, after.get(column, 0) - before.get(column, 0))

    answered = sum(delta(c) for c in ANSWER_COLUMNS)
    broken = delta("eresp")
    failed = max(broken + delta("econ"), delta("wredis"))
    why = "no answer (closed, timed out or broken)" if broken else "connection failed"
    return failed, answered, why


def row_latency_max(row: Mapping[str, int]) -> int:
    """An upper bound of the slowest request's time to response headers since the last `clear counters`."""
    return row.get("qtime_max", 0) + row.get("ctime_max", 0) + row.get("rtime_max", 0)


# ---- the haproxy master process -------------------------------------------------------------------


class _Master(Protocol):
    """What the router needs of the haproxy master: `asyncio.subprocess.Process`, or `_Adopted`."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def terminate(self) -> None: ...

    async def wait(self) -> int: ...


class _Adopted:
    """A haproxy master started by an earlier owner: not our child, so watched by pid, never reaped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    @property
    def returncode(self) -> int | None:
        return None if _alive(self.pid) else -1  # its real exit code went to whoever reaps it

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    async def wait(self) -> int:
        while self.returncode is None:
            await asyncio.sleep(0.02)
        return -1


def running_master(workdir: Path) -> int | None:
    """The pid of the haproxy master that runs `workdir`'s config, per its pidfile, if it still runs."""
    try:
        pid = int((workdir / "haproxy.pid").read_text().split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if str(workdir / "haproxy.cfg").encode() in argv and _alive(pid) else None


def _alive(pid: int) -> bool:
    """Runs (an exited process nobody reaped yet is gone). Here rather than from `ingot.runtimes.process`,
    whose imports (the store, SQLAlchemy) would cost a restarted edge most of a second."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group `pid` leads (haproxy's master and worker); SIGKILL what is left after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGCONT):  # CONT: a stopped haproxy handles the TERM now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# ---- state ----------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Server:
    """One instance as a haproxy server; `weight` and `state` are what haproxy was last told."""

    name: str  # haproxy's: a slot (`s<n>`) or an added server (`x<n>`); "" until placed
    addr: Address
    owner: _Release
    weight: int = 0
    state: str = "maint"  # free slots (and added servers) are in maintenance
    base: dict[str, int] = field(default_factory=dict)  # the slot's counters when this instance took it
    health: BackendHealth = field(init=False)
    # `health.status()` as of the last time haproxy was told (what `backend_health()` reports).
    applied_health: str = "up"

    def __post_init__(self) -> None:
        self.health = BackendHealth(self.addr)


@dataclass(eq=False)
class _Release:
    name: str
    weight: int = 0
    draining: bool = False
    pool: list[_Server] = field(default_factory=list)
    # Counters of servers already deleted, so that the release's totals never go backwards.
    requests_gone: int = 0
    errors_gone: int = 0
    # Largest time to response headers per recent poll in which the release served requests.
    peaks: deque[int] = field(default_factory=lambda: deque(maxlen=PEAK_WINDOW))
    # The mean while the release last had servers, so it outlives the deletion of its pool.
    last_mean: float = 0.0

    def forget_server(self, row: Mapping[str, int] | None) -> None:
        if row is not None:
            self.requests_gone += row_requests(row)
            self.errors_gone += row_errors(row)


# ---- the router -----------------------------------------------------------------------------------


class HAProxyRouter:
    """Weighted HTTP router with haproxy as the data plane; see `ingot.routers.base.Router`.

    Mutations go to haproxy through the runtime API at once, never by reload. A weight change
    touches one server at a time, so it is not atomic across servers: servers that gain weight are
    raised before the others are lowered, so new requests always find a server, and for the few
    milliseconds between the commands both the old and the new split take requests.

    `stats()` answers from the last poll (every `POLL_INTERVAL` s, or `refresh()`), per release:

    - `requests`, `errors_5xx`: from the servers' `req_tot`, `hrsp_5xx`, `econ`, `eresp` (see
      `row_requests`, `row_errors`), cumulative since the release was first seen: the counters of
      deleted servers are kept. A request redispatched to another release after a failed connect
      counts for the release that answered it. haproxy's own 503 when no release has weight is
      counted for none.
    - `in_flight`: `scur` + `qcur` of the release's servers (including servers leaving its pool).
    - Latency is time until the response headers (queue + connect + server response), in whole
      milliseconds: haproxy measures no per-request percentiles and its `ttime` includes the time
      a keep-alive client sat idle before the request, so it is not used, and the time to stream
      the body is not included. `mean_ms` is haproxy's average over each server's last 1024
      requests, averaged over the release's servers by how many requests each has seen;
      `p50_ms` is that mean (not a median). `p99_ms` is the largest time to headers seen in the
      last `PEAK_WINDOW` polls in which the release served requests (haproxy's `*_max`, which the
      router resets with `clear counters` after each poll): an upper bound of the true p99 over
      that window, equal to it only when the slowest 1% are all as slow as the slowest request.
      (A request that ends in the instant between reading and resetting the maxima is missed.)

    `drain` sets the release's servers to haproxy's `drain` state (no new request) and waits for
    their `scur`/`qcur` to reach 0; `set_weights` with a weight > 0 makes them ready again.
    `drain_backends` takes some servers out of a pool the same way while the release keeps its
    weight (its other servers take their share), and waits for them alike.
    Health: see the module's docstring. Until `set_health` nothing is ejected; a connection haproxy
    cannot make is retried on another server either way.
    """

    def __init__(
        self,
        listen: Address,
        *,
        name: str = "",
        workdir: Path,
        haproxy: str = "haproxy",
        maxconn: int = 4096,
        timeouts: Timeouts | None = None,
        clients: ClientPolicy | None = None,
        slots: int = SLOTS,
    ) -> None:
        if slots < 1:
            raise ValueError(f"an haproxy router needs at least 1 server slot, got {slots}")
        self.name = name
        self.slots = slots
        self.clients = clients or ClientPolicy()  # written into the configuration: applies from `start`
        self.workdir = Path(workdir)
        self.haproxy = haproxy
        self.maxconn = maxconn
        self.timeouts = timeouts or Timeouts()
        self.api = RuntimeAPI(self.workdir / "admin.sock")
        self.backend = BACKEND  # the haproxy backend this router's servers are in (a front's routers: one each)
        self._servers_map = self.workdir / "servers.map"
        self._maintenance: str | None = None  # this backend's maint.map value while in maintenance
        # strategy.hold: its deadline (seconds since the epoch: haproxy's Lua compares it with its own clock)
        # while held; set before `start` (`hold_until`), a haproxy started or adopted is given it.
        self.hold_until: float | None = None
        self._listen = listen
        self._bound: Address | None = None
        self._releases: dict[str, _Release] = {}
        self._retiring: list[_Server] = []  # out of their pool, waiting for 0 sessions to be deleted
        self._rows: dict[str, dict[str, int]] = {}  # the last poll, by server name
        self._serial = 0  # of added (`x<n>`) servers
        self._cut: dict[str, int] = {}  # release -> sessions its last drain closed at the timeout
        self._free: list[str] = []  # slots no instance holds, in the order they are taken
        self._slot_base: dict[str, dict[str, int]] = {}  # a free slot's counters, for its next occupant
        self._raw_rows: dict[str, dict[str, int]] = {}  # the last `show stat`, by haproxy's server name
        self._proc: _Master | None = None
        self._log_file: IO[bytes] | None = None
        self._poller: asyncio.Task[None] | None = None
        self.respawns = 0  # haproxy processes started again after one died under this router
        self._lock = asyncio.Lock()
        # The prober runs while haproxy does: `_poll` (re)starts it, and it ends on its own after `stop`.
        self._health = HealthMonitor(
            self._label(),
            targets=lambda: [s.health for r in self._releases.values() for s in r.pool],
            changed=self._health_changed,
            running=lambda: self._proc is not None and self._proc.returncode is None,
        )
        self._reweigh_pending = False
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- paths ---------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "haproxy.cfg"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "haproxy.pid"

    @property
    def servers_map(self) -> Path:
        """slot → release; changed at runtime only (`add map`, `del map`), written empty at spawn."""
        return self._servers_map

    @property
    def maintenance_map(self) -> Path:
        """backend → `<Retry-After>|<page, base64>` (`maintenance_value`); written empty at spawn."""
        return self.workdir / "maint.map"

    @property
    def hold_map(self) -> Path:
        """backend → hold deadline (ms since the epoch) while held; its Lua beside it (`hold.lua`)."""
        return self.workdir / "hold.map"

    @property
    def log_path(self) -> Path:
        return self.workdir / "haproxy.log"

    @property
    def owner_path(self) -> Path:
        """Written at spawn: the master's pid and the address it listens on, for a later owner to adopt it."""
        return self.workdir / "owner.json"

    @property
    def pid(self) -> int | None:
        """The haproxy master's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    # ---- Router protocol: lifecycle ------------------------------------------------------------

    @property
    def listen_address(self) -> Address:
        return self._bound if self._bound is not None else self._listen

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError(f"router {self.name!r} is already started")
        binary = self._find_haproxy()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not await self._adopt():
            try:
                await self._launch(binary, self._listen)
            except BaseException:
                await self.stop()
                raise
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _launch(self, binary: str, listen: Address) -> None:
        """Start a haproxy of ours on `listen` and give it the pools and weights this router holds."""
        await self._claim_socket_path()
        listener = self._bind(listen)
        try:
            self.servers_map.write_text("")
            self.maintenance_map.write_text("")
            if self.holds:
                write_hold_files(self.hold_map)
            self._free, self._slot_base, self._raw_rows = slot_names(self.slots), {}, {}
            self.config_path.write_text(
                render_config(
                    name=self.name,
                    socket_path=self.api.path,
                    listen_fd=listener.fileno(),
                    maxconn=self.maxconn,
                    timeouts=self.timeouts,
                    servers_map=self.servers_map,
                    maintenance_map=self.maintenance_map,
                    slots=self.slots,
                    clients=self.clients,
                    hold_map=self.hold_map if self.holds else None,
                )
            )
            await self._spawn(binary, listener.fileno())
            self._bound = (self._listen[0], int(listener.getsockname()[1]))
            assert self._proc is not None
            self.owner_path.write_text(json.dumps({"pid": self._proc.pid, "listen": list(self._bound)}))
        except BaseException:
            await self._terminate()
            raise
        finally:
            listener.close()  # haproxy holds its own copy
        await self._wait_ready()
        async with self._lock:
            await self._restore_servers()

    async def _stop_poller(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def stop(self) -> None:
        await self._stop_poller()
        async with self._lock:
            if self._proc is not None and self._proc.returncode is None:
                with contextlib.suppress(OperationFailed, OSError, TimeoutError):
                    self._rows = await self._read_rows()  # the last counters, kept past the stop
            self._forget_haproxy_servers()
        await self._terminate()
        self._bound = None

    # ---- Router protocol: mutations ------------------------------------------------------------

    async def set_backends(self, release: str, addrs: list[Address]) -> None:
        async with self._lock:
            await self._set_pool(self._release(release), addrs)

    async def set_weights(self, weights: dict[str, int]) -> None:
        for name, weight in weights.items():
            if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
                raise ValueError(f"weight of release {name!r} must be an integer >= 0, got {weight!r}")
        async with self._lock:
            for name in weights:
                self._release(name)
            for rel in self._releases.values():
                rel.weight = weights.get(rel.name, 0)
                if rel.weight > 0:
                    rel.draining = False
            await self._apply_weights()

    async def drain(self, release: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        async with self._lock:
            rel = self._releases.get(release)
            if rel is None:
                return True
            rel.draining = True
            await self._apply_weights()
        self._cut[release] = 0
        if await self._wait_idle(lambda: self._servers_of(rel), deadline):
            return True
        return await self._cut_sessions(rel)

    async def _cut_sessions(self, rel: _Release) -> bool:
        """At the drain timeout, close the release's tunnels (WebSockets and other upgraded connections,
        which would otherwise hold it until its instances stop) with `shutdown session`; True if nothing is
        in flight after that. haproxy tells a tunnel by its 101 (`show sess all`), but not an event stream
        from a slow response: those are left to finish, or to the instances' stop, like any request. No
        WebSocket close frame: the client sees the connection close."""
        names = {server.name for server in self._servers_of(rel)}
        tunnels = tunnel_sessions(await self.api.run("show sess all"), names)
        for session in tunnels:
            await self.api.run(f"shutdown session {session}")
        self._cut[rel.name] = len(tunnels)
        return await self._wait_idle(lambda: self._servers_of(rel), time.monotonic() + (0.5 if tunnels else 0.0))

    def drain_cut(self, release: str) -> int | None:
        """Sessions of `release` its last `drain` closed at its timeout (see `_cut_sessions`)."""
        return self._cut.get(release, 0)

    async def drain_backends(self, release: str, addrs: list[Address], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        async with self._lock:
            rel = self._releases.get(release)
            if rel is None:
                return True
            gone = {(str(h), int(p)) for h, p in addrs}
            leaving = [s for s in rel.pool if s.addr in gone]
            self._cut[release] = 0  # nothing is cut here: its tunnels end with their instances
            await self._set_pool(rel, [s.addr for s in rel.pool if s.addr not in gone])
        return await self._wait_idle(lambda: leaving, deadline)

    async def remove_release(self, release: str) -> None:
        async with self._lock:
            rel = self._releases.pop(release, None)
            if rel is None:
                return
            pool, rel.pool = rel.pool, []
            await self._apply_weights()  # the other releases' servers first, so nothing is left bare
            for server in pool:
                await self._retire(server)

    async def set_maintenance(self, retry_after: int | None, page: str | None = None) -> None:
        """As the builtin router's: with `retry_after`, every request is answered 503 with it and `page` (line breaks
        as spaces, see `maintenance_value`); None: served again at once. A page too big is refused (UserInputError)."""
        from ingot.routers.builtin.router import DEFAULT_MAINTENANCE_PAGE

        try:
            value = None if retry_after is None else maintenance_value(
                retry_after, page if page is not None else DEFAULT_MAINTENANCE_PAGE)
        except ValueError as exc:
            raise UserInputError(str(exc), details=["haproxy answers the page from a map value, within one buffer"]) \
                from None
        async with self._lock:
            self._maintenance = value
            if self._proc is not None and self._proc.returncode is None:
                await self._apply_maintenance()

    @property
    def maintenance(self) -> bool:
        return self._maintenance is not None

    async def _apply_maintenance(self) -> None:
        """Make haproxy's entry for this backend the value held (`set map` first: no gap when it is there)."""
        await self._set_entry(self.maintenance_map, self._maintenance)

    async def _set_entry(self, path: Path, value: str | None) -> None:
        """This backend's entry in the map `path`: `value`, or none (`set map` first: no gap when it is there)."""
        key = self.backend
        if value is None:
            answer = (await self.api.run(f"del map {path} {key}")).strip()
            # A haproxy from before the map (a front adopted across an upgrade) has none, and no entry.
            if answer and answer != "Key not found." and not answer.startswith("Unknown map"):
                raise OperationFailed(f"haproxy refused `del map {path} {key}`: {answer}")
            return
        answer = (await self.api.run(f"set map {path} {key} {value}")).strip()
        if answer == "entry not found.":
            await self.api.expect(f"add map {path} {key} {value}")
        elif answer:
            raise OperationFailed(f"haproxy refused `set map {path} {key}`: {answer[:200]}")

    # ---- strategy.hold ---------------------------------------------------------------------------

    @property
    def holds(self) -> bool:
        """Whether `hold` is available (routers.base.can_hold): haproxy built with Lua."""
        return haproxy_has_lua(self.haproxy)

    async def hold(self, seconds: float) -> None:
        """From now on new requests wait in haproxy (before a server is picked), for `release_hold`, at most
        `seconds`: haproxy ends the hold at its deadline itself (see `haproxy_config.hold_lua`)."""
        if not seconds > 0:
            raise ValueError(f"hold must be a number of seconds > 0, got {seconds!r}")
        if not self.holds:
            raise OperationFailed(f"{self._label()}: {self.haproxy} was built without Lua: it cannot hold requests")
        async with self._lock:
            self.hold_until = time.time() + seconds
            if self._proc is not None:
                self._require_running()
                try:
                    await self._apply_hold()
                except OperationFailed as exc:
                    self.hold_until = None
                    raise OperationFailed(f"{self._label()}: the running haproxy cannot hold requests: {exc}",
                                          details=["it was started without the hold's map and Lua (by an older "
                                                   "ingot): it gains them when it is started again"]) from None

    async def release_hold(self) -> int:
        """End the hold once every release without weight has nothing in flight but tunnels (the switch is
        complete), or at the hold's deadline. Returns how many requests were waiting at that moment."""
        held = 0
        while self.hold_until is not None and time.time() < self.hold_until and self._proc is not None:
            leaving = [s for r in self._releases.values() if r.weight == 0 or r.draining for s in self._servers_of(r)]
            raw = parse_stat(await self.api.run(f"show stat {self.backend} 6 -1"))
            rows = {s.name: raw.get(s.name, {}) for s in leaving}
            # Sessions in the backend not on a server: the held ones (counted as the builtin router does).
            held = max(0, raw.get("BACKEND", {}).get("scur", 0)
                       - sum(row.get("scur", 0) for name, row in raw.items() if name != "BACKEND"))
            busy = sum(row_busy(row) for row in rows.values())
            if busy == 0:
                break
            # Long-lived connections do not hold the switch (they are drained): only tunnels left is done.
            if busy <= len(tunnel_sessions(await self.api.run("show sess all"), set(rows))):
                break
            await asyncio.sleep(DRAIN_POLL)
        async with self._lock:
            self.hold_until = None
            if self._proc is not None and self._proc.returncode is None:
                await self._apply_hold()
        return held

    async def _apply_hold(self) -> None:
        """haproxy's hold entry for this backend as `hold_until` says (none once its deadline has passed)."""
        if self.hold_until is not None and self.hold_until <= time.time():
            self.hold_until = None
        await self._set_entry(self.hold_map, None if self.hold_until is None else str(int(self.hold_until * 1000)))

    async def set_health(self, check: HealthCheck) -> None:
        self._health.configure(check)

    # ---- Router protocol: reads ----------------------------------------------------------------

    def backend_health(self) -> dict[str, dict[str, str]]:
        """Health as haproxy applies it: an ejection shows once its `set server` commands are done."""
        return {
            name: {address_key(s.addr): s.applied_health for s in rel.pool} for name, rel in self._releases.items()
        }

    def stats(self) -> dict[str, ReleaseStats]:
        return {name: self._snapshot(rel) for name, rel in self._releases.items()}

    def weights(self) -> dict[str, int]:
        return {name: rel.weight for name, rel in self._releases.items()}

    async def refresh(self) -> dict[str, ReleaseStats]:
        """Poll haproxy now instead of waiting for the background poll; returns `stats()`."""
        async with self._lock:
            await self._poll()
        return self.stats()

    # ---- starting and stopping haproxy ---------------------------------------------------------

    def _label(self) -> str:
        return f"router {self.name!r}" if self.name else "router"

    def _find_haproxy(self) -> str:
        # Debian installs it in /usr/sbin, which is not on every user's PATH.
        found = shutil.which(self.haproxy) or shutil.which(self.haproxy, path="/usr/local/sbin:/usr/sbin:/sbin")
        if found is None:
            raise OperationFailed(
                f"{self._label()} needs haproxy, and {self.haproxy!r} was not found",
                details=["install it (on Debian: bash scripts/provision-haproxy) or set the path to it"],
            )
        return found

    async def _claim_socket_path(self) -> None:
        path = self.api.path
        if len(str(path).encode()) > SOCKET_PATH_MAX:
            raise OperationFailed(
                f"{self._label()} cannot use {path} as haproxy's admin socket: the path is longer than "
                f"{SOCKET_PATH_MAX} bytes, the limit of a Unix socket; choose a shorter workdir"
            )
        if not path.exists():
            return
        try:
            await self.api.run("show info")
        except (OSError, TimeoutError):
            path.unlink()  # left behind by an haproxy that is gone
            return
        raise OperationFailed(
            f"{self._label()} cannot start: another haproxy answers on {path}",
            details=["each router needs a workdir of its own; stop the other one or choose another workdir"],
        )

    def _bind(self, listen: Address) -> socket.socket:
        host, port = listen
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise self._bind_error(exc, listen) from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            raise self._bind_error(exc, listen) from None
        return sock

    def _bind_error(self, exc: OSError, listen: Address) -> OperationFailed:
        host, port = listen
        if exc.errno == errno.EADDRINUSE:
            return OperationFailed(
                f"{self._label()} cannot listen on {host}:{port}: the address is already in use",
                details=[
                    "another process (or another router) is bound to it;",
                    "stop it or choose another `router.listen` address",
                ],
            )
        return OperationFailed(f"{self._label()} cannot listen on {host}:{port}: {exc.strerror or exc}")

    async def _adopt(self) -> bool:
        """Take over the haproxy an earlier owner of this workdir left running; False if there is none to take.

        See the module's docstring for how it is known to be ours. One that is ours but does not answer
        within `ADOPT_TIMEOUT` is killed (it would hold the address), and `start()` starts a new one.
        """
        pid = running_master(self.workdir)
        if pid is None:
            return False
        try:
            owner = json.loads(self.owner_path.read_text())
            listen: Address = (str(owner["listen"][0]), int(owner["listen"][1]))
            mine = int(owner["pid"]) == pid and (listen == self._listen or (
                self._listen[1] == 0 and listen[0] == self._listen[0]))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            mine = False
        why = "it listens elsewhere or was not started by a router"
        if mine:
            try:
                api = RuntimeAPI(self.api.path, timeout=ADOPT_TIMEOUT)
                info = await api.run("show info")
                worker = next(int(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("Pid:"))
                if _parent_of(worker) != pid:
                    raise ValueError(f"the admin socket is served by pid {worker}, not a worker of {pid}")
                servers = parse_servers_state(await api.run(f"show servers state {self.backend}"))
                # A haproxy of an ingot before slots has no such map: replaced (its config differs too).
                owners = parse_map(await api.run(f"show map {self.servers_map}"))
                parse_map(await api.run(f"show map {self.maintenance_map}"))  # one from before maintenance: replaced
                raw = parse_stat(await api.run(f"show stat {self.backend} 4 -1"))
            except (OSError, TimeoutError, ValueError, StopIteration, OperationFailed) as exc:
                mine, why = False, f"it does not answer on {self.api.path} ({exc or type(exc).__name__})"
        if not mine:
            log.warning("%s: replacing haproxy pid %d: %s", self._label(), pid, why)
            await asyncio.to_thread(_kill_group, pid, STOP_TIMEOUT)
            return False
        self._proc = _Adopted(pid)
        self._bound = listen
        async with self._lock:
            changes = await self._reconcile(servers, owners, raw)
        log.info("%s: adopted haproxy pid %d on %s:%d (%d servers, %d runtime changes)", self._label(), pid,
                 *listen, len(servers), changes)
        return True

    async def _reconcile(self, found: list[ServerState], owners: Mapping[str, str],
                         raw: Mapping[str, Mapping[str, int]]) -> int:
        """Make the adopted haproxy's servers the pools and weights this router holds; returns the commands sent.

        `owners` is the slot → release map; a slot it does not name is free. Counters go on from haproxy's.
        """
        await self._apply_maintenance()  # first: the servers' changes then never serve a request it answers
        await self._apply_hold()  # a hold that outlived the edge goes on to its deadline, or ends now
        sent = 0
        serials = [int(f.name[len(OVERFLOW_PREFIX):]) for f in found
                   if not is_slot(f.name) and f.name[len(OVERFLOW_PREFIX):].isdigit()]
        self._serial = max([self._serial, *serials])
        self._free, self._slot_base = [], {}
        for seen in found:
            if is_slot(seen.name) and seen.name not in owners:
                self._free.append(seen.name)
                self._slot_base[seen.name] = counters_of(raw.get(seen.name, {}))
                if seen.weight or seen.state != "maint":  # a crash halfway through freeing it
                    await self.api.expect(f"set server {self.backend}/{seen.name} weight 0")
                    await self.api.expect(f"set server {self.backend}/{seen.name} state maint")
                    sent += 2
        for rel in self._releases.values():
            for server in rel.pool:
                server.name = ""
        held = [f for f in found if f.name in owners]
        unclaimed = {(owners[f.name], f.addr): f for f in reversed(held)}
        for rel in self._releases.values():
            for server in rel.pool:
                claim = unclaimed.pop((rel.name, server.addr), None)
                if claim is not None:
                    server.name, server.weight, server.state = claim.name, claim.weight, claim.state
        for rel in self._releases.values():  # after every claim, so that no claimed slot is taken
            for server in rel.pool:
                if not server.name:
                    await self._add_server(server)
                    sent += 1
        claimed = {s.name for r in self._releases.values() for s in r.pool}
        self._infer_ejections()
        for seen in found:
            if seen.name in claimed or (is_slot(seen.name) and seen.name not in owners):
                continue
            # In haproxy, in no pool (the earlier owner died before freeing it): drained, then freed.
            release = owners.get(seen.name, "")
            server = _Server(seen.name, seen.addr, self._releases.get(release) or _Release(release),
                             weight=seen.weight, state=seen.state)
            sent += (seen.weight != 0) + (seen.state != "drain")
            await self._retire(server)
        before = [(s.weight, s.state) for r in self._releases.values() for s in r.pool]
        await self._apply_weights()
        after = [(s.weight, s.state) for r in self._releases.values() for s in r.pool]
        return sent + sum(a != b for a, b in zip(before, after, strict=True))

    def _infer_ejections(self) -> None:
        """A server at weight 0 in a weighted release that gives its other servers weight was ejected."""
        check = self._health.check
        if check is None or not check.ejects:
            return
        for rel in self._releases.values():
            if rel.weight == 0 or rel.draining or not any(s.weight > 0 for s in rel.pool):
                continue
            for server in rel.pool:
                if server.weight == 0 and server.state == "ready":
                    server.health.ejected = True
                    server.health.ejected_at = time.monotonic()
                    server.health.reason = "ejected before the edge restarted (back after passing probes)"

    async def _spawn(self, binary: str, *listen_fds: int) -> None:
        self._log_file = self.log_path.open("ab")
        # -W master-worker, -db foreground: the master is our child, and it takes its worker down
        # with it. Its own session keeps a Ctrl-C meant for the caller from reaching it first.
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            "-W",
            "-db",
            "-f",
            str(self.config_path),
            "-p",
            str(self.pid_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            pass_fds=listen_fds,
            start_new_session=True,
        )

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self._proc is not None
            if self._proc.returncode is not None:
                raise self._died(f"haproxy exited with code {self._proc.returncode} while starting")
            try:
                await self.api.run("show info")
                return
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise self._died(f"haproxy's admin socket did not answer within {START_TIMEOUT:g} s") from None
                await asyncio.sleep(0.01)

    def _died(self, what: str) -> OperationFailed:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            tail = []
        return OperationFailed(
            f"{self._label()} on {self._listen[0]}:{self._listen[1]}: {what}",
            details=[f"last lines of {self.log_path}:", *tail] if tail else [],
        )

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.returncode is None:
                proc.terminate()  # SIGTERM: haproxy's hard stop, every connection closed
                try:
                    await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
                except TimeoutError:
                    log.warning("%s: haproxy did not stop within %g s; killing it", self._label(), STOP_TIMEOUT)
            # Whatever is left of its session (a worker that outlived the master) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for path in (self.pid_path, self.owner_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # ---- servers and weights -------------------------------------------------------------------

    async def _set_pool(self, rel: _Release, addrs: Iterable[Address]) -> None:
        wanted = list(dict.fromkeys((str(h), int(p)) for h, p in addrs))
        kept = [s for s in rel.pool if s.addr in wanted]
        gone = [s for s in rel.pool if s.addr not in wanted]
        have = {s.addr for s in kept}
        fresh = [_Server("", a, rel) for a in wanted if a not in have]
        for server in fresh:
            await self._add_server(server)
        rel.pool = kept + fresh
        await self._apply_weights()  # the new servers take requests before the old ones stop
        for server in gone:
            await self._retire(server)

    async def _wait_idle(self, servers: Callable[[], Iterable[_Server]], deadline: float) -> bool:
        """Poll `show stat` until no session or queue is left on `servers`; False at `deadline`.

        A server that is gone from haproxy (deleted once idle) counts as idle.
        """
        if self._proc is None:
            return True  # not started: nothing can be in flight
        while True:
            rows = await self._read_rows()
            if sum(row_busy(rows.get(s.name, {})) for s in servers()) == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL)

    def _release(self, name: str) -> _Release:
        rel = self._releases.get(name)
        if rel is None:
            if not isinstance(name, str) or not RELEASE_NAME.fullmatch(name):
                raise ValueError(
                    f"release id {name!r} cannot name an haproxy server: use 1-64 letters, digits, '.', '_' "
                    "or '-', starting with a letter or digit"
                )
            rel = self._releases[name] = _Release(name)
        return rel

    async def placed(self) -> dict[str, tuple[str, Address]]:
        """What haproxy itself says: server → (release, address) for every slot or added server that holds one."""
        self._require_running()
        owners = parse_map(await self.api.run(f"show map {self.servers_map}"))
        found = parse_servers_state(await self.api.run(f"show servers state {self.backend}"))
        return {f.name: (owners[f.name], f.addr) for f in found if f.name in owners}

    def _servers_of(self, rel: _Release) -> Iterable[_Server]:
        yield from rel.pool
        yield from (s for s in self._retiring if s.owner is rel)

    def _require_running(self) -> None:
        if self._proc is None:
            raise OperationFailed(f"{self._label()} is not started")
        if self._proc.returncode is not None:
            raise self._died(f"haproxy is not running (it exited with code {self._proc.returncode})")

    async def _add_server(self, server: _Server) -> None:
        """Put `server` in a free slot (or, with none left, add it to haproxy), in maintenance at weight 0."""
        if self._proc is None:
            return  # not started: `start()` adds the pools
        self._require_running()
        host, port = server.addr[0], server.addr[1]
        ip = await _ip_of(host, port)
        if self._free:
            slot = self._free.pop(0)
            server.name, server.base = slot, self._slot_base.pop(slot, {})
            self._rows.pop(slot, None)  # the previous occupant's: no delta across occupants
            await self.api.expect(f"add map {self.servers_map} {slot} {server.owner.name}")
            await self.api.set_addr(f"{self.backend}/{slot}", ip, port)
            server.weight, server.state = -1, "maint"  # -1: unknown, so the next weight is sent
            return
        self._serial += 1
        server.name, server.base = f"{OVERFLOW_PREFIX}{self._serial}", {}
        log.warning("%s: all %d server slots are taken; %s:%d is added as a server that never reuses "
                    "connections (slower): give the router more slots", self._label(), self.slots, host, port)
        address = f"ipv6@{ip}:{port}" if ":" in ip else f"{ip}:{port}"
        await self.api.expect(f"add map {self.servers_map} {server.name} {server.owner.name}")
        await self.api.expect(f"add server {self.backend}/{server.name} {address} weight 0", "New server registered.")
        server.weight, server.state = 0, "maint"

    async def _set(self, server: _Server, *, weight: int | None = None, state: str | None = None) -> None:
        if self._proc is None:
            return
        self._require_running()
        if weight is not None and weight != server.weight:
            await self.api.expect(f"set server {self.backend}/{server.name} weight {weight}")
            server.weight = weight
        if state is not None and state != server.state:
            await self.api.expect(f"set server {self.backend}/{server.name} state {state}")
            server.state = state

    async def _apply_weights(self) -> None:
        """Bring every pool server to its share of its release's weight: raises first, then cuts.

        Ejected servers get no share (unless every server of every weighted release is ejected).
        """
        live = {r.name: r.weight for r in self._releases.values() if not r.draining}
        weighted = [r for r in self._releases.values() if live.get(r.name, 0) > 0]
        open_ = fail_open([s.health for s in r.pool] for r in weighted)

        def serves(server: _Server) -> bool:
            return open_ or not server.health.ejected

        sizes = {r.name: sum(1 for s in r.pool if serves(s)) for r in self._releases.values()}
        per_server = server_weights(live, sizes)
        targets = [(s, per_server.get(r.name, 0) if serves(s) else 0) for r in self._releases.values() for s in r.pool]
        for server, weight in targets:
            if weight > 0:
                await self._set(server, weight=weight, state="ready")
        for server, weight in targets:
            if weight == 0:
                await self._set(server, weight=0, state="drain" if server.owner.draining else None)
        for server, _ in targets:
            server.applied_health = server.health.status()  # now true of what haproxy does

    async def _retire(self, server: _Server) -> None:
        """Out of the pool: no new requests; deleted by `_reap` once its last session ended."""
        await self._set(server, weight=0, state="drain")
        self._retiring.append(server)

    async def _reap(self) -> None:
        """Delete retiring servers that have no session left, keeping their counters."""
        # Called right after a poll, under the lock: `_rows` holds every server haproxy has.
        self._retiring = [s for s in self._retiring if s.name in self._rows]
        idle = [s for s in self._retiring if row_busy(self._rows[s.name]) == 0]
        if not idle:
            return
        for server in idle:
            await self._set(server, weight=0, state="maint")  # haproxy deletes only servers in maintenance
        rows = await self._read_rows()  # the final counters, now that nothing can reach them
        for server in idle:
            if is_slot(server.name):
                self._slot_base[server.name] = counters_of(self._raw_rows.get(server.name, {}))
                self._free.append(server.name)
            else:
                answer = (await self.api.run(f"del server {self.backend}/{server.name}")).strip()
                if answer != "Server deleted.":
                    # Still has a connection attached (a request that slipped in): try again next poll.
                    log.debug("%s: del server %s: %s", self._label(), server.name, answer)
                    continue
            await self.api.run(f"del map {self.servers_map} {server.name}")
            self._retiring.remove(server)
            if self._releases.get(server.owner.name) is server.owner:
                server.owner.forget_server(rows.get(server.name))

    async def _restore_servers(self) -> None:
        """Give a (re)started haproxy the pools and weights this router holds (maintenance first: in it, no
        request reaches a server of the new haproxy)."""
        await self._apply_maintenance()
        await self._apply_hold()
        for rel in self._releases.values():
            for server in rel.pool:
                await self._add_server(server)
        await self._apply_weights()

    def _forget_haproxy_servers(self) -> None:
        """haproxy is going away: keep every server's counters, and its pool for a later start."""
        for rel in self._releases.values():
            for server in rel.pool:
                rel.forget_server(self._rows.get(server.name))
                server.name, server.base, server.weight, server.state = "", {}, 0, "maint"
        for server in self._retiring:
            if self._releases.get(server.owner.name) is server.owner:
                server.owner.forget_server(self._rows.get(server.name))
        self._retiring.clear()
        self._rows = {}

    # ---- polling -------------------------------------------------------------------------------

    async def _read_rows(self, then: str = "") -> dict[str, dict[str, int]]:
        """Each placed server's `show stat` row, its counters since it took its slot (`then`: more commands)."""
        self._require_running()
        self._raw_rows = parse_stat(await self.api.run(f"show stat {self.backend} 4 -1{then}"))
        servers = [s for r in self._releases.values() for s in r.pool] + self._retiring
        return {s.name: since(self._raw_rows[s.name], s.base) for s in servers if s.name in self._raw_rows}

    async def _poll(self) -> None:
        """Refresh the counters, record latency peaks, reset haproxy's maxima, free idle retirees."""
        # One connection for both: haproxy runs them back to back, so almost no maximum is lost.
        rows = await self._read_rows(";clear counters")
        previous, self._rows = self._rows, rows
        self._observe(previous, rows)
        for rel in self._releases.values():
            served = [
                rows[s.name]
                for s in self._servers_of(rel)
                if s.name in rows and rows[s.name].get("req_tot", 0) > previous.get(s.name, {}).get("req_tot", 0)
            ]
            if served:
                rel.peaks.append(max(row_latency_max(row) for row in served))
            rel.last_mean = self._mean(rel, rel.last_mean)
        await self._reap()
        self._health.ensure_running()  # after a (re)start: the prober ends when haproxy stops

    def _observe(self, previous: Mapping[str, Mapping[str, int]], rows: Mapping[str, Mapping[str, int]]) -> None:
        """Passive health: each pool server's failed attempts and answers since the previous poll."""
        if not self._health.passive:
            return
        for rel in self._releases.values():
            for server in rel.pool:
                before, after = previous.get(server.name), rows.get(server.name)
                if before is None or after is None:
                    continue
                failed, answered, why = passive_delta(before, after)
                if answered:
                    self._health.request_answered(server.health)
                elif failed:
                    self._health.request_failed(server.health, why, failed)

    def _health_changed(self) -> None:
        """A server was ejected or came back: re-weigh soon (once, however many changed meanwhile)."""
        if self._reweigh_pending:
            return
        self._reweigh_pending = True
        task = asyncio.get_running_loop().create_task(self._reweigh())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reweigh(self) -> None:
        async with self._lock:
            self._reweigh_pending = False
            try:
                await self._apply_weights()
            except (OperationFailed, OSError, TimeoutError) as exc:
                log.warning("%s: applying a health change to haproxy failed: %s", self._label(), exc)

    async def _poll_forever(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if self._proc is None or self._proc.returncode is not None:
                failures = 0 if await self._respawn() else failures + 1
                if failures:
                    await asyncio.sleep(min(RESPAWN_BACKOFF_MAX, RESPAWN_BACKOFF * 2 ** (failures - 1)))
                continue
            try:
                async with self._lock:
                    await self._poll()
            except (OperationFailed, OSError, TimeoutError) as exc:
                log.warning("%s: polling haproxy failed: %s", self._label(), exc)

    async def _respawn(self) -> bool:
        """haproxy died under a running router (a crash, an OOM kill): start another on the same address with
        the same pools and weights. Its listening socket died with it, so clients are refused until then."""
        code = None if self._proc is None else self._proc.returncode
        listen = self._bound or self._listen
        log.error("%s: haproxy exited (code %s); starting it again on %s:%d", self._label(), code, *listen)
        async with self._lock:
            self._forget_haproxy_servers()
        await self._terminate()
        try:
            await self._launch(self._find_haproxy(), listen)
        except (OperationFailed, OSError) as exc:
            async with self._lock:
                self._forget_haproxy_servers()
            await self._terminate()
            log.error("%s: haproxy could not be started again: %s", self._label(), exc)
            return False
        self.respawns += 1
        log.info("%s: haproxy started again (pid %s)", self._label(), self.pid)
        return True

    def _rows_of(self, rel: _Release) -> list[dict[str, int]]:
        return [self._rows[s.name] for s in self._servers_of(rel) if s.name in self._rows]

    def _mean(self, rel: _Release, otherwise: float) -> float:
        """haproxy's per-server averages, weighted by how many of its last 1024 requests each saw."""
        samples = [(min(r.get("req_tot", 0), HAPROXY_AVERAGE_WINDOW), row_latency_avg(r)) for r in self._rows_of(rel)]
        seen = sum(n for n, _ in samples)
        return sum(n * ms for n, ms in samples) / seen if seen else otherwise

    def _snapshot(self, rel: _Release) -> ReleaseStats:
        rows = self._rows_of(rel)
        mean = self._mean(rel, rel.last_mean)
        return ReleaseStats(
            requests=rel.requests_gone + sum(row_requests(row) for row in rows),
            errors_5xx=rel.errors_gone + sum(row_errors(row) for row in rows),
            in_flight=sum(row_busy(row) for row in rows),
            p50_ms=float(mean),
            p99_ms=float(max(rel.peaks, default=0)),
            mean_ms=float(mean),
        )


async def _ip_of(host: str, port: int) -> str:
    """`set server ... addr` takes an IP address only: a host name is resolved once, here."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise OperationFailed(f"backend {host}:{port}: the host name does not resolve ({exc})") from None
    return str(infos[0][4][0])


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def stop_leftover_haproxy(workdir: Path) -> None:
    """A haproxy that no router will adopt (its router is gone) is stopped, with its worker."""
    pid = running_master(workdir)
    if pid is not None:
        _kill_group(pid, STOP_TIMEOUT)
