"""Self-heal's bookkeeping: the backoff of failed replacements, and its interval setting."""

from __future__ import annotations

import pytest

from ingot.agent.selfheal import BACKOFF_CAP, DEFAULT_INTERVAL, Backoff, heal_interval
from ingot.deploy_params import DeployParams, HealthPolicy
from ingot.errors import UserInputError


def test_each_failed_replacement_doubles_the_wait_up_to_the_cap() -> None:
    backoff = Backoff()
    assert backoff.ready(0.0) and backoff.delay() == 0  # the first repair is never held back
    waits = [backoff.fail(100.0, "it exited") for _ in range(12)]
    assert waits[:5] == [1, 2, 4, 8, 16]
    assert waits[-1] == BACKOFF_CAP == 300 and max(waits) == BACKOFF_CAP
    assert not backoff.ready(100.0 + BACKOFF_CAP - 0.1) and backoff.ready(100.0 + BACKOFF_CAP)
    assert backoff.as_dict(150.0) == {"failed_replacements": 12, "next_try_in": 250.0, "last_failure": "it exited"}


def test_a_replacement_that_dies_soon_after_starting_counts_as_failed() -> None:
    backoff = Backoff(stable_after=30)
    backoff.repaired(10.0, ["web-a", "web-b"])
    assert backoff.check(12.0, {"web-old": "exited"}) is None  # another instance's trouble says nothing of these
    assert backoff.check(11.5, {"web-b": "exited"}) == (
        "failed", "replacement web-b: exited 1.5s after passing its health gate")
    assert backoff.fail(11.5, "web-b exited") == 1
    assert backoff.probation == {}  # judged once: the next repair puts its own replacements on probation


def test_the_backoff_ends_once_replacements_stay_healthy_long_enough() -> None:
    backoff = Backoff(stable_after=30)
    backoff.fail(0.0, "gate failed")
    backoff.fail(1.0, "gate failed")
    backoff.repaired(5.0, ["web-c"])
    assert backoff.check(34.0, {}) is None and backoff.failures == 2  # not long enough yet
    assert backoff.check(35.0, {}) == ("stable", "")
    assert backoff.failures == 0 and backoff.delay() == 0 and backoff.ready(35.0)
    backoff.repaired(40.0, ["web-d"])
    assert backoff.check(80.0, {}) is None  # nothing to end: it was not backing off


def test_heal_interval_from_the_option_the_environment_or_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INGOT_HEAL_INTERVAL", raising=False)
    assert heal_interval() == DEFAULT_INTERVAL == 5
    monkeypatch.setenv("INGOT_HEAL_INTERVAL", "1.5s")
    assert heal_interval() == 1.5
    assert heal_interval("2m") == 120  # the option wins over the environment
    assert heal_interval("0") == 0  # off
    with pytest.raises(UserInputError, match="--heal-interval: expected a duration"):
        heal_interval("soon", "--heal-interval")
    monkeypatch.setenv("INGOT_HEAL_INTERVAL", "-1s")
    with pytest.raises(UserInputError, match="INGOT_HEAL_INTERVAL"):
        heal_interval()


def test_self_heal_travels_with_the_deployment_parameters() -> None:
    params = DeployParams(replicas=2, health=HealthPolicy(), listen=("127.0.0.1", 8080), self_heal=False)
    assert DeployParams.from_dict(params.as_dict()) == params
    older = params.as_dict()
    del older["self_heal"]  # recorded before the setting existed: self-healing, the default
    assert DeployParams.from_dict(older).self_heal is True
