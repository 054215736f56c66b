"""The haproxy configuration of one `HAProxyRouter`: written once at start, never reloaded.

Everything that changes during a rollout (servers, their addresses, weights, states) goes through
the runtime API afterwards, so the file only holds what stays fixed for the life of the process:
the admin socket, timeouts, the listener and the one backend with its server slots.

Servers are slots declared here (`server-template`), disabled, and filled at runtime (`set server ... addr`,
`weight`, `state`): haproxy 2.6 never reuses a backend connection of a server added at runtime (`add server`),
which costs about 60% of its throughput, while declared servers do. Slot names say nothing about releases: the
slot → release map (a map file, changed with `add map`/`del map`) gives `X-Ingot-Release` and lets a later
owner read back which slot serves which release.

The client policy (`ClientPolicy`) maps to haproxy's own means: `timeout http-request` is the head deadline;
connections past `max_connections` are answered 503 (`fe_conn`; haproxy's own `maxconn` is set above it so
that it still accepts them and can answer); a duplicate, malformed or (HTTP/1.1) missing `Host` is denied with
400; a client's `X-Forwarded-For` is deleted unless it comes from a trusted proxy, before `option forwardfor`
adds the peer; the release header is set or deleted. haproxy has no minimum body rate: its `timeout client`
(inactivity) is what bounds a slow body.

Hold (`strategy.hold`). haproxy's only waiting room is a chosen server's queue, so the configuration carries a
small Lua action (`hold_lua`, loaded with `lua-load`) that a backend runs while its entry in a map (`hold.map`,
keyed by backend name, like maintenance) is there: the request waits before any server is picked, in 5 ms
sleeps, until the entry is removed (`del map`) or the deadline it holds (milliseconds since the epoch) passes.
haproxy itself ends a hold at its deadline, whatever becomes of the router. Without the entry it costs each
request one lookup in an empty map, and no Lua at all. A haproxy built without Lua gets no such rule, and its
router cannot hold (`haproxy_has_lua`).
"""

from __future__ import annotations

import base64
import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ingot.routers.base import ClientPolicy

# Names inside the config that the runtime commands refer to.
FRONTEND = "ingot"
BACKEND = "releases"
# Server slots are `s1`..`s<N>`; servers added at runtime once every slot is taken are `x<n>`.
SLOT_PREFIX = "s"
OVERFLOW_PREFIX = "x"
SLOTS = 64  # per router: more instances than this at once are added as servers that never reuse connections
# haproxy's config and runtime commands take the map's path unquoted inside a converter: keep it plain.
_MAP_PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")

# Release ids are map values (one word) and once were server names; 12 hex digits in practice. The
# leading character and the length limit keep them valid and readable.
RELEASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# A maintenance page is a map value (base64 of it), looked up and decoded into one buffer (tune.bufsize, 16 KiB)
# per request: past this many bytes it would not fit with its encoding and the response head.
MAINTENANCE_PAGE_MAX = 8192

# Plain-text answers haproxy makes itself, worded like the builtin router's.
NO_RELEASE_503 = "503 Service Unavailable: no release has weight"
NO_BACKEND_502 = "502 Bad Gateway: no backend could serve the request"
TOO_MANY_503 = "503 Service Unavailable: too many connections open"
BAD_HOST_400 = "400 Bad Request: the request could not be parsed"
# The builtin router's Host rule (headers._VALID_HOST) as haproxy's regex, in single quotes (haproxy expands
# `$` in double ones), which leave the quote itself out of the allowed characters.
_HOST_REGEX = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&()*+,;=-]*)(:[0-9]{0,5})?$"
# Connections haproxy accepts beyond the cap, to answer them 503 rather than leave them in the backlog.
_OVER_CAP = 256


@dataclass(frozen=True)
class Timeouts:
    """Seconds; the same meaning and defaults as the builtin router's options."""

    connect: float = 2.0
    server: float = 60.0  # waiting for a response, or for the next piece of one
    client: float = 75.0  # client inactivity, including between keep-alive requests
    request: float = 10.0  # receiving a complete request head


def slot_names(slots: int) -> list[str]:
    return [f"{SLOT_PREFIX}{n}" for n in range(1, slots + 1)]


def is_slot(server: str) -> bool:
    return server.startswith(SLOT_PREFIX) and server[len(SLOT_PREFIX):].isdigit()


def check_map_path(path: Path) -> str:
    text = str(path)
    if not _MAP_PATH.fullmatch(text):
        raise ValueError(f"haproxy map path {text!r} must be absolute, of letters, digits and ._/@+- only")
    return text


def server_template(slots: int) -> str:
    """The slots: disabled (in maintenance), weight 0, at a placeholder address until filled."""
    return f"    server-template {SLOT_PREFIX} 1-{slots} 127.0.0.1:1 disabled weight 0"


def render_config(*, name: str, socket_path: Path, listen_fd: int, maxconn: int, timeouts: Timeouts,
                  servers_map: Path, maintenance_map: Path, slots: int = SLOTS,
                  clients: ClientPolicy | None = None, hold_map: Path | None = None) -> str:
    """The whole configuration file; `listen_fd` is a listening socket haproxy inherits; `servers_map` the
    slot → release map and `maintenance_map` the backend → maintenance answer map (both must exist);
    `hold_map` the backend → hold deadline map, with its Lua beside it (`write_hold_files`), or None (no Lua)."""
    c = clients or ClientPolicy(head_timeout=timeouts.request, max_connections=maxconn)
    lines = [
        f"# Written by ingot for router {name or '(unnamed)'}; never reloaded: servers and weights",
        "# change only through the runtime API on the stats socket below.",
        *global_and_defaults(socket_path, maxconn, timeouts, c, hold_lua_path(hold_map)),
        f"frontend {FRONTEND}",
        f"    bind fd@{listen_fd}",
        *client_rules(c, "http"),
        f"    default_backend {BACKEND}",
        "",
        *backend_lines(BACKEND, servers_map, slots, c, maintenance_map, hold_map),
    ]
    return "\n".join(lines)


def global_and_defaults(socket_path: Path, maxconn: int, timeouts: Timeouts, c: ClientPolicy,
                        hold_lua: Path | None = None) -> list[str]:
    t = timeouts
    maxconn = min(max(maxconn, c.max_connections + _OVER_CAP), _fd_bound())
    return [
        "global",
        # expose-fd lets a future haproxy take over the listener without closing it.
        f"    stats socket {socket_path} level admin expose-fd listeners",
        "    stats timeout 30s",
        f"    maxconn {maxconn}",
        *([f"    lua-load {check_map_path(hold_lua)}"] if hold_lua is not None else []),
        "",
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        # Without it haproxy sends a body it expects more of with MSG_MORE, and the kernel holds the bytes up to
        # 200 ms: server-sent events would arrive in bursts. Complete small responses are sent at once either way.
        "    option http-no-delay",
        "    option forwardfor",
        # 'safe' never sends a client's first request over a connection another client used,
        # which keeps a backend's close-at-idle race away from requests that cannot be replayed.
        "    http-reuse safe",
        # Reused connections race a backend closing them at idle; haproxy replays a request only while it
        # holds it whole (`retry-on empty-response`), so small bodies are read before a server is picked.
        # This also puts a small body under `timeout http-request`.
        "    option http-buffer-request",
        f"    timeout connect {_ms(t.connect)}",
        f"    timeout server {_ms(t.server)}",
        f"    timeout client {_ms(t.client)}",
        # A WebSocket (or other upgraded) connection may be quiet for long; a drain closes it on a deploy.
        "    timeout tunnel 1h",
        f"    timeout http-keep-alive {_ms(t.client)}",
        f"    timeout http-request {_ms(c.head_timeout)}",
        f"    timeout queue {_ms(t.connect)}",
        # A killed instance refuses connections, and a backend may close a reused connection just
        # as a request goes out: retry both, on another server each time (it may be the same
        # release's other instance or, if none is left, another weighted release).
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        f'    http-error status 503 content-type text/plain string "{NO_RELEASE_503}"',
        f'    http-error status 502 content-type text/plain string "{NO_BACKEND_502}"',
        "",
    ]


def client_rules(c: ClientPolicy, proto: str) -> list[str]:
    """A frontend's treatment of clients (see the module's docstring); `proto` is X-Forwarded-Proto."""
    trusted = " ".join(c.trusted_proxies)
    forwarded = ([f"    http-request del-header X-Forwarded-For unless {{ src {trusted} }}"] if trusted
                 else ["    http-request del-header X-Forwarded-For"])
    return [
        # `deny` (not `return`) closes the connection after answering, as the built-in router does.
        f'    http-request deny status 503 content-type text/plain string "{TOO_MANY_503}" '
        f"if {{ fe_conn gt {c.max_connections} }}",
        # One rule, the usual case (one valid Host) decided by its first two fetches: allowed are one Host of the
        # right form, or none on HTTP/1.0; a duplicate, malformed or (HTTP/1.1) missing one is refused.
        "    http-request deny deny_status 400 unless { req.hdr_cnt(host) eq 1 } "
        f"{{ req.hdr(host) -m reg '{_HOST_REGEX}' }} or {{ req.hdr_cnt(host) eq 0 }} !{{ req.ver 1.1 }}",
        *forwarded,
        f"    http-request set-header X-Forwarded-Proto {proto}",
        "    http-request set-header X-Forwarded-Host %[req.hdr(host)] if { req.hdr(host) -m found }",
    ]


def backend_lines(backend: str, servers_map: Path, slots: int, c: ClientPolicy, maintenance_map: Path,
                  hold_map: Path | None = None) -> list[str]:
    release_of_server = f"srv_name,map({check_map_path(servers_map)})"
    paused = f"be_name,map({check_map_path(maintenance_map)})"
    # strategy.hold: the Lua action runs only while the backend has an entry in the hold map.
    held = ([f"    http-request lua.{HOLD_ACTION} if {{ be_name,map({check_map_path(hold_map)}) -m found }}"]
            if hold_map is not None else [])
    return [
        f"backend {backend}",
        # Maintenance: the backend's entry in the map (`maintenance_value`) is answered here, no server picked.
        # Keyed by backend name, so the front's backends share one map; no entry, one lookup and on.
        '    http-request return status 503 content-type "text/html; charset=utf-8" '
        f'hdr Retry-After "%[{paused},field(1,|)]" hdr Cache-Control no-store '
        f'lf-string "%[{paused},field(2,|),b64dec]" if {{ {paused} -m found }}',
        *held,
        # roundrobin is smooth and honours weight changes at once, which dynamic servers need.
        "    balance roundrobin",
        # One lookup straight into the header, no variable; without the header the map is only referenced, in a
        # rule whose condition (`FALSE`) is tested first and never holds: haproxy loads only maps its config uses,
        # and the runtime commands and a later owner need this one, but no response pays for a lookup.
        *([f"    http-response set-header X-Ingot-Release %[{release_of_server}]"] if c.release_header
          else ["    http-response del-header X-Ingot-Release",
                f"    http-response set-var(txn.release) {release_of_server} if FALSE"]),
        server_template(slots),
        "",
    ]


HOLD_ACTION = "ingot_hold"
HOLD_SLEEP_MS = 5  # how often a held request looks at the map again: the most a release adds to its wait


def hold_lua(hold_map: Path) -> str:
    """The Lua file `lua-load` reads: the `ingot_hold` action over `hold_map` (see the module's docstring).
    The map is opened once, at load; `add map`/`set map`/`del map` on the same file change what it sees."""
    return "\n".join([
        "-- Written by ingot: strategy.hold. While this backend has an entry in the hold map (its deadline in",
        "-- ms since the epoch), a request waits here, before any server is picked; never reloaded.",
        f'local holds = Map.new("{check_map_path(hold_map)}", Map._str)',
        f'core.register_action("{HOLD_ACTION}", {{"http-req"}}, function(txn)',
        "  local backend = txn.f:be_name()",
        "  while true do",
        "    local deadline = tonumber(holds:lookup(backend) or \"\")",
        "    if deadline == nil then return end",
        "    local now = core.now()",
        "    if now.sec * 1000 + now.usec // 1000 >= deadline then return end",
        f"    core.msleep({HOLD_SLEEP_MS})",
        "  end",
        "end, 0)",
        "",
    ])


def hold_lua_path(hold_map: Path | None) -> Path | None:
    return hold_map.with_suffix(".lua") if hold_map is not None else None


def write_hold_files(hold_map: Path) -> None:
    """An empty hold map (no backend held) and the Lua that reads it, for a haproxy about to start."""
    hold_map.write_text("")
    path = hold_lua_path(hold_map)
    assert path is not None
    path.write_text(hold_lua(hold_map))


@functools.cache
def haproxy_has_lua(binary: str) -> bool:
    """Whether `binary` (a path or a name on PATH) was built with Lua (`haproxy -vv` lists USE_LUA=1)."""
    try:
        out = subprocess.run([binary, "-vv"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "USE_LUA=1" in out


def maintenance_value(retry_after: int, page: str) -> str:
    """The maintenance map's value: `<Retry-After>|<page, base64>`. haproxy escapes control characters in what
    it formats (a newline would be sent as `%0A`), so line breaks become spaces and other controls but tab
    are dropped: HTML renders the same (except inside <pre>). ValueError past `MAINTENANCE_PAGE_MAX`."""
    text = re.sub(r"\r\n|[\r\n]", " ", page)
    data = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text).encode("utf-8")
    if len(data) > MAINTENANCE_PAGE_MAX:
        raise ValueError(f"the page is {len(data)} bytes; an HAProxy router serves at most {MAINTENANCE_PAGE_MAX}")
    return f"{int(retry_after)}|{base64.b64encode(data).decode('ascii')}"


def _fd_bound() -> int:
    """The most connections haproxy can hold here: it needs two files per connection (client and server
    side) and refuses to start when the hard RLIMIT_NOFILE cannot cover that. Past it, connections wait in
    the listen backlog instead of being answered 503."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return (1 << 20) if hard == resource.RLIM_INFINITY else max(256, (hard - 1000) // 2)


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"
