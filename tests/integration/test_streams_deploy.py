"""WebSockets and server-sent events across a deploy and a rollback, through the CLI and the edge.

The app is tests/support/stream_app.py (a WebSocket echo that names its version, and an event stream);
the WebSocket client is the `websockets` library. An open connection stays on the release it opened on
while the new release serves new ones, until drain_timeout: then it is closed (a WebSocket with close
1001) and the deploy says how many were cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from ingot.edge.client import call_sync
from ingot.edge.home import EdgeHome
from ingot.errors import OperationFailed
from ingot.routers.haproxy import running_master
from tests.support.harness import ExampleProject, Result, load, make_example, poll, stop_everything, use_strategy

STREAM_APP = Path(__file__).resolve().parents[1] / "support" / "stream_app.py"
DRAIN = 3


def stream_example(tmp_path: Path, kind: str, strategy: str) -> ExampleProject:
    """The example with the stream app, `strategy` and router `kind`."""
    example = make_example(tmp_path, replicas=1)
    shutil.copy(STREAM_APP, example.root / "app.py")
    use_strategy(example, f"    strategy: {strategy}")
    if kind == "haproxy":
        spec = example.root / "ingot.yaml"
        spec.write_text(spec.read_text().replace(f'router: {{listen: "127.0.0.1:{example.port}"}}',
                                                 f'router: {{listen: "127.0.0.1:{example.port}", kind: haproxy}}'))
    example.env["TEST_ROUTER_KIND"] = kind  # read back by the test (harmless to ingot)
    return example


@pytest.fixture(params=["builtin", "haproxy"])
def streams(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExampleProject]:
    example = stream_example(tmp_path, request.param, f"{{type: blue-green, drain_timeout: {DRAIN}s}}")
    yield example
    stop_everything(example)


def builtin(example: ExampleProject) -> bool:
    return example.env["TEST_ROUTER_KIND"] == "builtin"


def going_away(example: ExampleProject) -> int | None:
    """The close code a cut WebSocket sees: 1001 from the built-in router; haproxy just closes (none)."""
    return 1001 if example.env["TEST_ROUTER_KIND"] == "builtin" else None


class Events(threading.Thread):
    """An SSE client in a thread: the events as they arrive, and whether the stream ended."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.events: list[str] = []
        self.ended = threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=httpx.Timeout(5, read=30), trust_env=False) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()


def in_background(example: ExampleProject, *args: str) -> tuple[threading.Thread, list[Result]]:
    out: list[Result] = []
    thread = threading.Thread(target=lambda: out.append(example.ingot(*args)), daemon=True)
    thread.start()
    return thread, out


def echo(ws: ClientConnection, text: str) -> str:
    ws.send(text)
    return str(ws.recv(timeout=5))


def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=DRAIN + 30)
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


def switch(example: ExampleProject, version: str, *args: str) -> tuple[threading.Thread, list[Result]]:
    """Run `ingot <args>` in the background and return once `version` answers new requests."""
    thread, out = in_background(example, *args)
    poll(lambda: example.get()["version"] == version, timeout=60, what=f"v{version} serving new requests")
    return thread, out


def test_long_lived_connections_stay_on_their_release_then_are_cut(streams: ExampleProject) -> None:
    streams.ingot("deploy", check=True)
    ws_url = f"ws://127.0.0.1:{streams.port}/ws"
    with connect(ws_url, open_timeout=5) as old:
        deploy_cuts(streams, old, ws_url)
        rollback_cuts(streams, ws_url)


def deploy_cuts(streams: ExampleProject, old: ClientConnection, ws_url: str) -> None:
    events = Events(f"{streams.url}events?every=0.1")
    events.start()
    poll(lambda: len(events.events) >= 2, timeout=10, what="events streaming from v1")
    assert echo(old, "a") == "1:a"

    streams.set_version("2")
    thread, out = switch(streams, "2", "deploy")
    # The new release serves new connections; the open ones stay on the old release meanwhile.
    with connect(ws_url, open_timeout=5) as new:
        assert echo(new, "b") == "2:b"
    assert echo(old, "c") == "1:c"
    seen = len(events.events)
    poll(lambda: len(events.events) > seen, timeout=5, what="events still streaming from v1")
    assert closed_with(old) == going_away(streams)
    # On HAProxy the event stream is not cut by the drain (it cannot be told from a slow response): it
    # ends when its instance stops.
    assert events.ended.wait(20) and all(e.startswith("1 ") for e in events.events)
    thread.join(60)
    assert out and out[0].code == 0, out
    cut = 2 if builtin(streams) else 1
    assert f"{cut} long-lived connection{'s' if cut > 1 else ''} closed after drain_timeout {DRAIN}s" in out[0].out
    log = streams.ingot("audit", "log", "--json", "--limit", "200", check=True).json
    cuts = [e["payload"].get("cut") for e in log if e["action"] == "deploy.step"
            and e["payload"].get("step") == "drain" and e["payload"].get("status") == "done"]
    assert cuts == [cut]



def rollback_cuts(streams: ExampleProject, ws_url: str) -> None:
    """A rollback drains the same way."""
    with connect(ws_url, open_timeout=5) as current:
        rolled_back(streams, current)


def rolled_back(streams: ExampleProject, current: ClientConnection) -> None:
    assert echo(current, "d") == "2:d"
    thread, out = switch(streams, "1", "rollback")
    assert echo(current, "e") == "2:e"
    assert closed_with(current) == going_away(streams)
    thread.join(60)
    assert out and out[0].code == 0, out
    assert f"1 long-lived connection closed after drain_timeout {DRAIN}s" in out[0].out


def overlap(spans: list[list[Any]]) -> float:
    """Seconds by which the new release's first request (in the app) began before the old one's last ended."""
    old = [finished for version, _, finished in spans if version == "1"]
    new = [started for version, started, _ in spans if version == "2"]
    assert old and new, spans[:5]
    return max(old) - min(new)


def held_switch(example: ExampleProject) -> dict[str, Any]:
    log = example.ingot("audit", "log", "--json", "--limit", "200", check=True).json
    routes = [e["payload"] for e in log if e["action"] == "deploy.step" and e["payload"].get("step") == "route"
              and e["payload"].get("status") == "done"]
    return dict(routes[-1])


@pytest.mark.parametrize("kind", ["builtin", "haproxy"])
def test_hold_lets_no_request_overlap_the_switch(tmp_path: Path, kind: str) -> None:
    # Without the hold the releases overlap at the switch: shown on each router without timing luck in
    # tests/unit/test_router_streams.py and tests/haproxy/test_haproxy_hold.py.
    example = stream_example(tmp_path, kind, "{type: blue-green, drain_timeout: 3s, hold: 5s}")
    try:
        example.ingot("deploy", check=True)
        example.set_version("2")
        # Each request takes 200 ms in the app (a wait, not CPU): at the switch several are in flight on the old
        # release, however busy the machine, so the next ones from the connections that finish first are held.
        # (At 30 ms a CI machine under load once had none in flight then: nothing to hold, `held` 0.)
        with load(f"{example.url}?sleep=0.2", tmp_path, connections=6) as during:
            deployed = example.ingot("deploy", check=True)
            poll(lambda: example.get()["version"] == "2", timeout=10, what="v2 serving")
        assert during["failures"] == [], during["failures"][:5]
        assert "holding new requests up to 5s" in deployed.out
        # Not one request of the new release began before the last of the old one had finished.
        assert overlap(during["spans"]) <= 0
        route = held_switch(example)
        assert route["hold"] == 5.0 and route["held"] >= 1
    finally:
        stop_everything(example)


@pytest.mark.parametrize("kind", ["builtin", "haproxy"])
def test_an_edge_killed_mid_hold_holds_again_until_released(tmp_path: Path, kind: str) -> None:
    """kill -9 of the edge while it holds: the restarted edge reads the hold (and its deadline) from its state
    and holds again; the agent's release_hold, made again, ends it once the old release is done."""
    example = stream_example(tmp_path, kind, "{type: blue-green, drain_timeout: 3s, hold: 10s}")
    home = EdgeHome.default()
    try:
        example.ingot("deploy", check=True)
        master = running_master(home.router_dir(router_id(example))) if kind == "haproxy" else None
        example.set_version("2")
        # 0.4 s requests: the hold lasts until the old release's last one ends, long enough to kill the edge in it.
        with load(f"{example.url}?sleep=0.4", tmp_path, connections=CONNECTIONS) as during:
            thread, out = in_background(example, "deploy")
            poll(lambda: holding(home), timeout=60, interval=0.005, what="the edge to hold")
            edge = int(call_sync(home, "ping")["pid"])
            os.kill(edge, signal.SIGKILL)
            poll(lambda: edge_pid(home) not in (None, edge), timeout=10, what="the edge to start again")
            thread.join(120)
            assert out and out[0].code == 0, out[0].out if out else out
            poll(lambda: example.get()["version"] == "2", timeout=10, what="v2 serving")
        assert "holding new requests again" in home.log.read_text()
        assert not holding(home)  # released, and the release persisted
        if kind == "haproxy":
            # haproxy outlived the edge, holding: nothing failed, and the adopted one is the same process.
            assert during["failures"] == [], during["failures"][:5]
            assert running_master(home.router_dir(router_id(example))) == master
        else:
            # The built-in router lost what the killed edge was proxying (held requests included), no more.
            assert len(during["failures"]) <= CONNECTIONS, during["failures"]
        assert overlap(during["spans"]) <= 0
    finally:
        stop_everything(example)


CONNECTIONS = 6


def router_id(example: ExampleProject) -> str:
    return f"{example.state.resolve()}#staging/web@127.0.0.1:{example.port}"


def holding(home: EdgeHome) -> bool:
    """Whether the edge's persisted state has a router holding requests (strategy.hold)."""
    try:
        routes = json.loads(home.state_file.read_text())["routes"]
    except (OSError, ValueError, KeyError):
        return False
    return any(r.get("hold_until") for r in routes)


def edge_pid(home: EdgeHome) -> int | None:
    with contextlib.suppress(OperationFailed, OSError, ValueError, KeyError):
        return int(call_sync(home, "ping", timeout=1.0)["pid"])
    return None
