"""Retention as data: what a prune keeps and removes, and why."""

from __future__ import annotations

from ingot.retention import ReleaseInfo, decide


def releases(n: int, service: str = "web") -> list[ReleaseInfo]:
    return [ReleaseInfo(f"r{i}", service, f"sha256:{i}", float(i)) for i in range(1, n + 1)]


def test_keeps_live_and_rollback_targets_per_environment() -> None:
    rels = releases(8)
    history = {("staging", "web"): ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"],
               ("production", "web"): ["r1", "r2"]}
    decision = decide(rels, history, {}, 3, {r.artifact for r in rels})
    # Staging keeps r8 (live), r7, r6; production keeps r2 (live) and r1: a staging prune never
    # takes production's rollback inventory.
    assert set(decision.keep) == {"sha256:8", "sha256:7", "sha256:6", "sha256:2", "sha256:1"}
    assert set(decision.remove) == {"sha256:3", "sha256:4", "sha256:5"}
    assert "live in staging: release r8" in decision.keep["sha256:8"]
    assert "rollback target in staging: release r7" in decision.keep["sha256:7"]
    assert "live in production: release r2" in decision.keep["sha256:2"]


def test_a_rollback_does_not_make_the_newer_release_disappear() -> None:
    rels = releases(4)
    history = {("staging", "web"): ["r1", "r2", "r3", "r4", "r2"]}  # rolled back to r2
    decision = decide(rels, history, {("staging", "web"): 2}, 5, {r.artifact for r in rels})
    assert set(decision.keep) == {"sha256:2", "sha256:4"}
    assert "live in staging: release r2" in decision.keep["sha256:2"]


def test_undeployed_releases_are_kept_only_among_the_newest() -> None:
    rels = releases(5)
    decision = decide(rels, {}, {}, 2, {r.artifact for r in rels})
    assert set(decision.keep) == {"sha256:5", "sha256:4"}
    assert set(decision.remove) == {"sha256:1", "sha256:2", "sha256:3"}


def test_shared_artifacts_are_kept_if_any_release_needs_them_and_missing_ones_are_not_listed() -> None:
    rels = [ReleaseInfo("a", "web", "sha256:x", 1.0), ReleaseInfo("b", "web", "sha256:x", 2.0),
            ReleaseInfo("c", "web", "sha256:y", 3.0)]
    history = {("staging", "web"): ["a", "c"]}
    decision = decide(rels, history, {("staging", "web"): 1}, 5, {"sha256:x"})
    assert decision.keep["sha256:y"] == ["live in staging: release c"]
    assert "sha256:x" in decision.keep  # b never deployed, among the newest: kept
    assert decision.remove == {}
