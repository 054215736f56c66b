"""The builtin router: an asyncio HTTP/1.1 reverse proxy living inside the agent process.

Modules: `router` (the `BuiltinRouter` API, dispatch, housekeeping), `client` and `upstream` (the
protocols of the two sides), `exchange` (one request/response between them), `headers` (heads
rewritten for the other side), `balancing` (release and backend choice), `stats` (the counters
behind `ReleaseStats`), `flow` (why a client connection stops reading).

Design notes (the why; the what is in the code):

- Protocol-level code (`asyncio.Protocol` + httptools callbacks) instead of streams: a request is a
  handful of C-parser callbacks and two socket writes, which is what makes tens of thousands of
  requests/s on one core possible in Python (bench/router_bench.py). Bytes produced while one
  chunk of input is parsed are collected in a list and written once after the parser returns,
  so a small request or response costs one send().
- Bodies are streamed in both directions as the parser hands them over; nothing buffers a whole
  body. Chunked bodies are re-chunked piece by piece (trailers are dropped, as `Trailer` is
  hop-by-hop here). Back-pressure: a full write buffer on one side pauses reading on the other.
- Request bytes are kept (up to `REPLAY_LIMIT`) until the backend's first response byte, so that
  a pooled keep-alive connection the backend closed at the same moment we reused it can be
  replayed once on a fresh connection. That race is the main source of errors during deploys.
- Pipelined client requests are queued and answered strictly one after the other.
- `Expect: 100-continue` is answered by the router itself (like nginx) and not forwarded.
- Upgrade/CONNECT are not proxied: such a request is forwarded as a plain request without its
  Upgrade header, and the client connection is closed after the response.
- `X-Forwarded-For` is appended to; `X-Forwarded-Proto` and `X-Forwarded-Host` are replaced, since
  the router is the hop that knows what the client connected with.
- Timeouts: connect (`connect_timeout`), between bytes while waiting on a backend (`read_timeout`,
  504 before the response started, a cut connection after), idle pooled upstream connections
  (`upstream_idle_timeout`) and idle client keep-alive connections (`client_idle_timeout`),
  enforced by one sweeper task every `SWEEP_INTERVAL` rather than a timer per request.
- Health (`ingot.routers.health`, shared with HAProxy): the only per-request cost is one slot
  store resetting the backend's failed-request run when a response head arrives. Failures,
  probes, ejections and returns are rare events off the hot path; each recomputes the releases'
  `usable` lists, which is all that backend choice walks.
- Hot path: names are imported directly (no `module.name` lookups per request), and per-request
  steps stay inline rather than in small helpers; keep it so (bench/router_bench.py).
"""

from ingot.routers.builtin.router import BuiltinRouter, install_fast_loop

__all__ = ["BuiltinRouter", "install_fast_loop"]
