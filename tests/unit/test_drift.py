"""Drift rules as data: observations in, findings with evidence out."""

from __future__ import annotations

from ingot.drift import Observed, ServiceObservation, Stray, env_differences, find_drift


def observation(*instances: Observed, replicas: int = 2, strays: tuple[Stray, ...] = (),
                runtime: str = "process", store_problem: str | None = None) -> ServiceObservation:
    return ServiceObservation(environment="staging", service="web", release="r1", artifact="sha256:aa",
                              runtime=runtime, replicas=replicas, instances=instances, strays=strays,
                              store_problem=store_problem)


def ok(name: str) -> Observed:
    return Observed(instance=name, release="r1", alive=True, actual_artifact="sha256:aa")


def test_a_clean_service_has_no_findings() -> None:
    assert find_drift(observation(ok("a"), ok("b"))) == []


def test_missing_counts_only_capacity_nothing_else_accounts_for() -> None:
    [finding] = find_drift(observation(ok("a"), replicas=3))
    assert finding.kind == "missing" and finding.evidence["count"] == 2 and finding.instance is None
    exited = Observed(instance="b", release="r1", alive=False, exit_detail="exited with code 137",
                      log_tail=("killed",))
    findings = find_drift(observation(ok("a"), exited))
    assert [(f.kind, f.instance) for f in findings] == [("exited", "b")]
    assert findings[0].evidence == {"detail": "exited with code 137", "last_log_lines": ["killed"]}


def test_each_instance_problem_is_a_finding_with_evidence() -> None:
    changed = Observed(instance="a", release="r1", alive=True, actual_artifact="sha256:bb",
                       changed_files=(("app.py", "modified"),), env_diff=(("GREETING", "hello", "hacked"),),
                       health="HTTP 500")
    findings = {f.kind: f for f in find_drift(observation(changed, ok("b")))}
    assert set(findings) == {"artifact_mismatch", "changed_files", "changed_env", "unhealthy"}
    assert findings["changed_files"].evidence == {"files": ["modified: app.py"]}
    assert findings["changed_env"].evidence["variables"] == [
        {"name": "GREETING", "expected": "hello", "actual": "hacked"}]
    assert findings["artifact_mismatch"].evidence == {"expected": "sha256:aa", "actual": "sha256:bb"}
    assert findings["unhealthy"].repair.startswith("start a fresh instance")


def test_containers_report_image_mismatch_and_strays() -> None:
    other = Observed(instance="a", release="r1", alive=True, actual_artifact="sha256:cc")
    stray = Stray(ident="c0ffee", instance="web-zzz", release="r0", detail="running")
    findings = find_drift(observation(other, ok("b"), strays=(stray,), runtime="docker"))
    assert [f.kind for f in findings] == ["image_mismatch", "unknown"]
    assert findings[1].evidence["ident"] == "c0ffee"


def test_corrupt_store_copy_is_reported_as_unrepairable_from_the_store() -> None:
    [finding] = find_drift(observation(ok("a"), ok("b"), store_problem="modified: app.py"))
    assert finding.kind == "artifact_corrupt" and "rebuild" in finding.repair


def test_env_differences_name_missing_and_changed_variables() -> None:
    assert env_differences({"A": "1", "B": "2"}, {"A": "1", "B": "3", "C": "x"}) == (("B", "2", "3"),)
    assert env_differences({"A": "1"}, {}) == (("A", "1", None),)
