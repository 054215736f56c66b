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


def test_hold_is_refused_where_the_router_cannot_hold(tmp_path: Path) -> None:
    spec = tmp_path / "ingot.yaml"
    spec.write_text(
        "project: p\nservices:\n  web:\n    build: .\n    command: [python, app.py]\n    port: 8000\n"
        "    strategy: {hold: 5s}\n    router: {listen: '127.0.0.1:8080'}\n"
        "environments:\n  staging: {}\n  production:\n    services:\n"
        "      web: {router: {listen: '127.0.0.1:9080', kind: haproxy}}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert caught.value.details == [
        f"{spec}:13: environments.production.services.web.strategy: hold needs the built-in router, which queues "
        "requests during the switch; router.kind haproxy has no way to park new requests at runtime: remove "
        "strategy.hold or use router.kind builtin"]
