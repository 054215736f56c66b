"""The one small interface every router implements (builtin proxy, HAProxy, Kubernetes).

A router is the traffic entry point of one service in one environment. It splits new requests
between *releases* by relative integer weight; each release has a pool of backend addresses.

Contract every implementation keeps (tests/contract/ runs the same tests against each):

- Mutations (`set_backends`, `set_weights`, `drain`, `drain_backends`, `remove_release`) are coroutines
  so that routers that talk to something remote (HAProxy runtime API, the edge's control socket) fit;
  each is atomic from the point of view of new requests. Reads (`stats`, `weights`, `listen_address`)
  are plain and cheap: remote routers answer them from their last poll.
- A release that is named nowhere, or has weight 0, gets no new requests.
- `drain(release)` takes the release OUT OF ROTATION (no new requests, whatever its weight, until a
  later `set_weights` gives it a weight > 0 again) and waits for its requests in flight. It is only
  for a release that is leaving: never call it on the release that serves. To take some instances
  of a serving release away, use `drain_backends`, which keeps the release's weight.
- A backend or release that stops receiving new requests still finishes the ones it has; the
  drain calls are how the caller learns that it is safe to stop its instances. Both return False
  when the timeout passed with requests still in flight (the caller says so: it is not silent).
- Health (`set_health`, `HealthCheck`): a router ejects backends that fail probes or requests. An
  ejected backend gets no new requests; its requests in flight are left alone. Ejection is the
  router's own view: `weights()` and the pools the caller set never change because of it, and
  `set_backends` keeps the health state of every address it keeps (a new address starts "up": it
  passed the caller's health gate). If every backend of every weighted release is ejected, the
  router FAILS OPEN: it sends traffic to them anyway, since a probe that fails everywhere at once
  (a wrong path, an overloaded shared dependency) more likely says something about the check than
  about every instance, and a 503 to every client is the one answer that is surely wrong. Until
  `set_health` is called nothing is ever ejected. `backend_health()` is a cheap read of that view.
- Long-lived connections (WebSocket tunnels, server-sent events) are requests in flight like any
  other for `drain`: they keep their release until they close or the timeout ends. A router that can
  close them then does (a WebSocket is sent close 1001 "going away") and says how many with
  `drain_cut(release)`; those closed connections do not make `drain` return False (only what is still
  in flight does). A router without `drain_cut` leaves them to the instances' stop (`drain_cut()` below
  reads None: not known).
- Optional: `hold(seconds)` / `release_hold()` (with `holds = True`): new requests wait in the router,
  sent nowhere, from `hold` until `release_hold` has seen every release without weight finish its
  requests (long-lived ones aside), at most `seconds`; they then go by the weights of that moment.
  The executor uses it for `strategy.hold` around a switch; a router without it is refused there.
  HAProxy has none: it has no runtime way to keep a new request waiting without sending it to a server.
- Optional: `set_maintenance(retry_after, page)` (plain or async): every request is answered 503 with
  `Retry-After` and the HTML page while the releases keep running; `retry_after` None serves again at
  once. `set_maintenance()` below calls it; a router without it is refused (exit 2).
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

from ingot.errors import UserInputError

Address = tuple[str, int]


@dataclass(frozen=True)
class ReleaseStats:
    """Counters of one release as seen by its router.

    `requests` and `errors_5xx` are cumulative since the release was first seen by the router;
    `errors_5xx` includes answers the router made itself (502/504) for requests it had chosen this
    release for, and responses cut off by the backend. Latency fields (milliseconds, request start to
    response end) cover a sliding window: the builtin router keeps the last `LATENCY_WINDOW`
    requests per release. They are 0.0 while the window is empty. `streams`: long-lived connections open
    now (WebSocket tunnels, server-sent events), counted in `in_flight` too; 0 where a router cannot tell.
    """

    requests: int = 0
    errors_5xx: int = 0
    in_flight: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    streams: int = 0

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


# How many recent requests per release the latency figures describe (builtin router).
LATENCY_WINDOW = 2048


@dataclass(frozen=True)
class HealthCheck:
    """How a router decides that a backend is out (ejected) and when it is back.

    Active: with a `path`, every backend of every release is sent `GET path` every `interval`
    seconds, straight (never through a proxy); a status 200-399 within `timeout` passes, anything
    else fails (refused, no answer in time, closed, not HTTP, 4xx, 5xx). `fall` failed probes in a
    row eject a backend; `rise` passing probes in a row bring it back. A new probe starts every
    `interval` even while an earlier one waits for its `timeout`, so a hung backend (one that still
    accepts connections, like a SIGSTOPped process) is out at most `(fall - 1) * interval + timeout`
    after its first unanswered probe: about `fall * interval + timeout` after it hung.
    Without a `path`, only backends that are ejected are probed, with `OPTIONS * HTTP/1.1` (a
    request about the server itself, with no side effect): any HTTP answer passes, whatever its
    status, since all it is to show is that the process answers again.

    Passive: `max_failures` failed requests in a row eject a backend at once (0: never). A failed
    request is one the backend did not answer: connection refused or not made within the router's
    connect timeout, a fresh connection closed before any answer, no response head within the
    router's read timeout. A 5xx is an answer and does NOT count: an application's error is the
    signal that canary analysis and the verification window judge a release by, and ejecting on
    it would move a bad release's traffic to the others and hide it from them (5xx on the probe
    path does count: that is the application saying it is unwell). An answer resets the count.
    Passive ejection only ends through probes (`rise` of them, as above).

    Requests already sent to a backend that hangs are not given up at `timeout`: they wait for the
    router's read timeout, like any slow answer. A stopped process may resume and answer them, a
    slow endpoint is not a hung one, and a request that was sent cannot be safely sent again.
    """

    path: str | None = None
    interval: float = 0.5
    timeout: float = 1.0
    fall: int = 2
    rise: int = 2
    max_failures: int = 3

    def __post_init__(self) -> None:
        path = self.path
        if path is not None and (
            not isinstance(path, str) or not path.startswith("/") or not path.isascii() or not path.isprintable()
            or " " in path
        ):
            raise ValueError(f"health check path must be an absolute URL path like /healthz, got {path!r}")
        for name in ("interval", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"health check {name} must be a number of seconds > 0, got {value!r}")
        for name, least in (("fall", 1), ("rise", 1), ("max_failures", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"health check {name} must be an integer >= {least}, got {value!r}")

    @property
    def ejects(self) -> bool:
        """Whether this check can eject anything at all."""
        return self.path is not None or self.max_failures > 0


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (each client connection is a file; the
    usual soft 1024 would stop a router long before its `max_connections`). Returns the limit now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


@dataclass(frozen=True)
class ClientPolicy:
    """How a router treats its clients, who are not trusted (the spec's `router` block; same meaning in both
    routers where they can, see each one's docstring for the differences).

    - `head_timeout`: a request head (request line and headers) must be complete this many seconds after the
      connection opened (first request) or after its first byte (later ones on a keep-alive connection);
      past it the connection is closed (408 if part of a head had come). A slowloris client holds nothing.
    - `min_body_rate`: bytes per second a request body must average, after a grace of `head_timeout`;
      time the router itself held the client back (a slow backend) does not count. 0: no minimum.
    - `max_connections`: client connections at once; one more is answered 503 and closed. Where the
      process's open-files limit cannot hold that many, the cap is what it can hold (said in the log), so
      a client past it is still answered rather than left in the listen backlog.
    - `trusted_proxies`: CIDRs whose `X-Forwarded-For` is kept (the peer is appended to it); from anyone
      else the header is replaced by the peer's address.
    - `release_header`: whether responses name the release that answered (`X-Ingot-Release`).
    """

    head_timeout: float = 10.0
    min_body_rate: int = 1024
    max_connections: int = 16384
    trusted_proxies: tuple[str, ...] = ()
    release_header: bool = True

    def __post_init__(self) -> None:
        import ipaddress

        if not self.head_timeout > 0 or self.min_body_rate < 0 or self.max_connections < 1:
            raise ValueError(f"client policy out of range: {self}")
        for cidr in self.trusted_proxies:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names it

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["trusted_proxies"] = list(self.trusted_proxies)
        return data

    @staticmethod
    def from_dict(data: dict[str, object] | None) -> ClientPolicy:
        if not data:
            return ClientPolicy()
        raw = dict(data)
        raw["trusted_proxies"] = tuple(str(c) for c in raw.get("trusted_proxies") or ())  # type: ignore[attr-defined]
        return ClientPolicy(**raw)  # type: ignore[arg-type]


@runtime_checkable
class Router(Protocol):
    """Splits a service's traffic between releases by weight and drains the ones it leaves."""

    @property
    def listen_address(self) -> Address:
        """Where clients connect; the bound port once started (useful with port 0)."""
        ...

    async def start(self) -> None:
        """Begin accepting traffic; raises `ingot.errors.OperationFailed` if the address is taken."""
        ...

    async def stop(self) -> None:
        """Stop accepting and close every connection, in-flight or not."""
        ...

    async def set_backends(self, release: str, addrs: list[Address]) -> None:
        """Replace the pool of `release`; removed backends get no new requests, in-flight ones finish."""
        ...

    async def set_weights(self, weights: dict[str, int]) -> None:
        """Atomically replace all weights; releases not named get weight 0."""
        ...

    async def drain(self, release: str, timeout: float) -> bool:
        """Wait until `release` has no request in flight; False if `timeout` seconds passed first."""
        ...

    async def drain_backends(self, release: str, addrs: list[Address], timeout: float) -> bool:
        """Take `addrs` out of `release`'s pool (its weight stays) and wait until they have nothing in
        flight; False if `timeout` seconds passed first."""
        ...

    async def remove_release(self, release: str) -> None:
        """Forget `release` (weight, pool, counters) and close its idle upstream connections."""
        ...

    async def set_health(self, check: HealthCheck) -> None:
        """Probe and eject backends as `check` says, from now on (see `HealthCheck`).

        Setting an equal check again changes nothing; a different one keeps every backend's state,
        and its thresholds apply from the next probe or request; one that can eject nothing
        (no path, `max_failures` 0) brings every backend back.
        """
        ...

    def backend_health(self) -> dict[str, dict[str, str]]:
        """release -> "host:port" -> "up" or "ejected: <why>", for every backend of every pool."""
        ...

    def stats(self) -> dict[str, ReleaseStats]: ...

    def weights(self) -> dict[str, int]: ...


def drain_cut(router: Router, release: str) -> int | None:
    """How many long-lived connections of `release` the router's last `drain` of it closed at its timeout;
    None when the router cannot tell (it does not close them: the instances' stop does)."""
    read = getattr(router, "drain_cut", None)
    return read(release) if callable(read) else None


def can_hold(router: Router) -> bool:
    """Whether the router can hold new requests during a switch (`strategy.hold`)."""
    return bool(getattr(router, "holds", False))


async def set_maintenance(router: Router, retry_after: int | None, page: str | None) -> None:
    """`router.set_maintenance` (the builtin router's is plain, haproxy's async); UserInputError without one."""
    method = getattr(router, "set_maintenance", None)
    if not callable(method):
        raise UserInputError(f"router {getattr(router, 'name', '')!r} has no maintenance mode")
    done = method(retry_after, page)
    if inspect.isawaitable(done):
        await done
