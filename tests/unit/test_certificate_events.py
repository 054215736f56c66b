"""The edge's certificate events reach the ledger of the project whose route names the host once each, across
agent restarts (the newest recorded event is read back from the ledger); and what `ingot status` says of an
ACME host's certificate."""

from __future__ import annotations

from pathlib import Path

from ingot import ledger
from ingot.agent.server import Agent
from ingot.edge.client import EdgeClient, EdgeRouter
from ingot.edge.home import EdgeHome
from ingot.edge.server import _acme_text
from ingot.paths import StatePaths


def _agent(root: Path, events: list[dict[str, object]]) -> Agent:
    agent = Agent(StatePaths(root))
    router = EdgeRouter(EdgeClient(EdgeHome(root / "edge")), router_id="r", owner=str(root), name="web",
                        kind="builtin", listen=("", 0))
    router.certificate_events = list(events)
    agent.routers[("default", "web")] = router
    return agent


def _recorded(root: Path) -> list[tuple[str, str | None, object]]:
    agent = Agent(StatePaths(root))
    return [(e.action, e.subject, e.payload["edge_event"]) for e in ledger.entries(agent.store)
            if e.action.startswith("certificate.")]


def test_events_are_recorded_once_even_by_a_restarted_agent(tmp_path: Path) -> None:
    first = {"id": 10, "at": 1.0, "host": "a.test", "kind": "tls_issued", "detail": "serial 1"}
    second = {"id": 20, "at": 2.0, "host": "a.test", "kind": "tls_failed", "detail": "refused"}
    agent = _agent(tmp_path, [first])
    agent._record_certificate_events()
    agent._record_certificate_events()
    assert _recorded(tmp_path) == [("certificate.issued", "a.test", 10)]
    restarted = _agent(tmp_path, [first, second])  # the edge still lists the first one
    restarted._record_certificate_events()
    assert _recorded(tmp_path) == [("certificate.issued", "a.test", 10), ("certificate.failed", "a.test", 20)]


def test_the_status_text_of_an_acme_host() -> None:
    failed = {"state": "failed", "last_error": "a.test: connection refused", "not_after": None,
              "next_attempt": "2026-12-01T18:05:00+00:00"}
    assert _acme_text(failed) == "failed: a.test: connection refused, retry at 2026-12-01 18:05:00 UTC"
    serving = {**failed, "not_after": "2027-03-01T00:00:00+00:00"}
    assert _acme_text(serving).endswith("; the old one serves until 2027-03-01 00:00:00 UTC")
    assert _acme_text({"state": "valid", "not_after": "2027-03-01T00:00:00+00:00"}) == \
        "valid until 2027-03-01 00:00:00 UTC"
    assert _acme_text({"state": "pending"}) == "pending (ACME order)"


def test_the_edge_keeps_certificate_events_across_a_restart(tmp_path: Path) -> None:
    from ingot.edge.server import Edge

    home = EdgeHome(tmp_path / "edge")
    Edge(home)._certificate_event("a.test", "tls_issued", "serial 1")
    (tmp_path / "edge" / "acme" / "garbage").write_text("x")  # what else is in acme/ is not read
    again = Edge(home)
    assert [(e["host"], e["kind"], e["detail"]) for e in again.certificate_events] == [
        ("a.test", "tls_issued", "serial 1")]
    (tmp_path / "edge" / "acme" / "events.json").write_text("{not json")
    assert list(Edge(home).certificate_events) == []  # unreadable: dropped, said in the log, never fatal
