"""An instance that hangs leaves the pool within 3 s, through the whole stack (agent -> edge -> router)."""

from __future__ import annotations

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
