"""strategy.hold in plans: the switch that takes a release's last traffic away carries the hold, as data."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingot.plan import CanaryStep, ServiceState, StrategyOptions, Target, plan_for
from ingot.spec import SpecError, load_spec
from ingot.spec.models import StrategySpec

SERVING = ServiceState(weights=(("old", 100),), instances=(("old", 2),))


def holds(strategy: str, state: ServiceState, options: StrategyOptions) -> list[tuple[dict[str, int], float | None]]:
    plan = plan_for(strategy, state, Target("new", 2), options)
    return [(dict(s.weights), s.seconds) for s in plan.steps if s.kind == "route"]


def test_blue_green_holds_its_one_switch() -> None:
    assert holds("blue-green", SERVING, StrategyOptions(hold=5.0)) == [({"new": 100}, 5.0)]
    assert holds("blue-green", SERVING, StrategyOptions()) == [({"new": 100}, None)]
    step = plan_for("blue-green", SERVING, Target("new", 2), StrategyOptions(hold=5.0)).steps[2]
    assert "holding new requests up to 5s" in step.describe() and step.as_dict()["seconds"] == 5.0


def test_a_first_deploy_has_nothing_to_hold_against() -> None:
    assert holds("blue-green", ServiceState(), StrategyOptions(hold=5.0)) == [({"new": 100}, None)]


def test_canary_and_rolling_hold_only_their_last_switch() -> None:
    canary = StrategyOptions(steps=(CanaryStep(10), CanaryStep(50)), hold=2.0)
    assert holds("canary", SERVING, canary) == [
        ({"new": 10, "old": 90}, None), ({"new": 50, "old": 50}, None), ({"new": 100}, 2.0)]
    rolling = holds("rolling", SERVING, StrategyOptions(hold=2.0))
    assert [seconds for _, seconds in rolling] == [None] * (len(rolling) - 1) + [2.0]
    assert rolling[-1][0] == {"new": 100}


def test_the_spec_takes_a_duration_and_the_options_carry_it() -> None:
    spec = StrategySpec.model_validate({"hold": "5s"})
    assert spec.hold == 5.0
    assert StrategyOptions.from_mapping(spec.model_dump(mode="json")).hold == 5.0
    assert StrategyOptions.from_mapping(StrategySpec().model_dump(mode="json")).hold is None


def test_hold_is_refused_only_on_kubernetes(tmp_path: Path) -> None:
    spec = tmp_path / "ingot.yaml"
    spec.write_text(
        "project: p\nservices:\n  web:\n    build: .\n    command: [python, app.py]\n    port: 8000\n"
        "    strategy: {hold: 5s}\n    router: {listen: '127.0.0.1:8080'}\n"
        "environments:\n  staging: {}\n  production:\n    services:\n"
        "      web: {router: {listen: '127.0.0.1:9080', kind: haproxy}}\n"
        "  cluster:\n    services:\n      web: {runtime: kubernetes, build: null, image: 'registry.example/web:1'}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    # HAProxy holds with Lua (tests/haproxy/test_haproxy_hold.py); only the cluster is refused.
    assert len(caught.value.details) == 1, caught.value.details
    assert caught.value.details[0].startswith(f"{spec}:")
    assert "environments.cluster.services.web.strategy: hold needs ingot's router (built-in or HAProxy)" in \
        caught.value.details[0]
    assert "remove strategy.hold" in caught.value.details[0]
