"""The health gate fails fast on an instance that answers its health path failing, and only on that: a
refused connection (still binding) and 503 (warming up) wait, up to the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ingot.deploy_params import HealthPolicy
from ingot.health import wait_healthy

POLICY = HealthPolicy(path="/healthz", interval=0.1, timeout=1.0, healthy_threshold=2, deadline=10.0,
                      unhealthy_threshold=3)


class _App:
    """A health endpoint answering `statuses` in turn (the last one from then on)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.answered = statuses, 0
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = app.statuses[min(app.answered, len(app.statuses) - 1)]
                app.answered += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.handler = Handler


@pytest.fixture
def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(port: int, app: _App, after: float = 0.0) -> Iterator[None]:
    servers: list[ThreadingHTTPServer] = []

    def run() -> None:
        time.sleep(after)
        server = ThreadingHTTPServer(("127.0.0.1", port), app.handler)
        servers.append(server)
        server.serve_forever(poll_interval=0.05)

    threading.Thread(target=run, daemon=True).start()
    yield
    if servers:
        servers[0].shutdown()
        servers[0].server_close()


def gate(port: int) -> tuple[bool, str, float]:
    verdict = asyncio.run(wait_healthy("127.0.0.1", port, POLICY, lambda: None))
    return verdict.healthy, verdict.reason, verdict.waited_s


def test_failing_answers_fail_the_gate_after_unhealthy_threshold_not_the_deadline(port: int) -> None:
    app = _App([500])
    with serve(port, app):
        healthy, reason, waited = gate(port)
    assert not healthy and app.answered == 3
    assert "answered /healthz with HTTP 500 3 time(s) in a row" in reason and "10s deadline" in reason
    assert waited < 2.0  # three answers spaced by the interval, far from the 10 s deadline


def test_refused_connections_and_503_while_starting_do_not_count(port: int) -> None:
    # Not listening for 0.6 s (six probes' worth), then "warming up" three times, a 500 blip, then healthy.
    app = _App([503, 503, 503, 500, 200])
    with serve(port, app, after=0.6):
        healthy, reason, waited = gate(port)
    assert healthy, reason
    assert waited > 0.6
