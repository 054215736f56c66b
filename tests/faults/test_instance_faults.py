"""An instance that hangs leaves the pool within 3 s, through the whole stack (agent -> edge -> router)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from ingot.edge.client import call_sync
from ingot.edge.home import EdgeHome
from tests.support.harness import ExampleProject, load, manual_repair, poll


def backend_state(example: ExampleProject, port: int) -> str:
    """What the edge's router says of the backend on `port`, asked straight (a CLI call takes ~1 s)."""
    router_id = f"{example.state.resolve()}#staging/web@127.0.0.1:{example.port}"
    answer = call_sync(EdgeHome.default(), "stats", id=router_id)
    for pool in answer["backends"].values():
        for address, state in pool.items():
            if address.endswith(f":{port}"):
                return str(state)
    return "absent"


def test_a_stopped_instance_is_ejected_within_3_s_and_back_after_it_resumes(routed: ExampleProject,
                                                                           tmp_path: Path) -> None:
    manual_repair(routed)  # self-heal would replace it; this test is about the router's own health
    routed.ingot("deploy", check=True)
    victim = routed.ingot("status", "--json", check=True).json["services"][0]["instances"][0]
    poll(lambda: backend_state(routed, victim["port"]) == "up", timeout=15, what="the router to probe it")
    with load(routed.url, tmp_path) as report:
        os.killpg(victim["pid"], signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            poll(lambda: backend_state(routed, victim["port"]).startswith("ejected"), timeout=10, interval=0.02,
                 what="the stopped instance to be ejected")
            ejected_after = time.monotonic() - stopped
        finally:
            # Requests it had accepted before it was ejected are answered now: slow, not lost.
            os.killpg(victim["pid"], signal.SIGCONT)
        poll(lambda: backend_state(routed, victim["port"]) == "up", timeout=15, what="it to come back")
    assert ejected_after < 3.0, ejected_after
    assert report["failures"] == [], report["failures"][:5]
    assert report["requests"] > 50


def test_a_drain_that_runs_out_of_time_is_said(example: ExampleProject) -> None:
    import threading

    import httpx

    from tests.support.harness import break_app, use_strategy

    use_strategy(example, "    strategy: {type: blue-green, drain_timeout: 1s, min_ready: 0s}")
    break_app(example, 'import time; time.sleep(20) if self.path == "/slow" else None')
    example.ingot("deploy", check=True)
    example.set_version("2")
    def slow_request() -> None:
        with contextlib.suppress(httpx.HTTPError):  # cut when its instance stops: that is the point
            httpx.get(example.url + "slow", timeout=30, trust_env=False)

    slow = threading.Thread(target=slow_request, daemon=True)
    slow.start()
    poll(lambda: any(s["in_flight"] for s in
                     example.ingot("status", "--json", check=True).json["services"][0]["router"]["stats"].values()),
         timeout=15, what="the slow request to be in flight")
    deployed = example.ingot("deploy", check=True)
    assert "warning: requests were still in flight after drain_timeout (1 s)" in deployed.out
    log = example.ingot("audit", "log", "--json", "--limit", "1000").json
    drains = [e for e in log if e["action"] == "deploy.step" and e["payload"].get("step") == "drain"
              and e["payload"].get("status") == "done"]
    assert drains and drains[-1]["payload"]["drained"] is False and "warning" in drains[-1]["payload"]
