"""ingot.oneoff as data: where the release_command step goes in a plan, when it is left out, the spec keys,
and which releases a rollback would go back past."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ingot import ledger, oneoff
from ingot.checks import masker
from ingot.plan import ServiceState, Target, plan_blue_green
from ingot.releases import load_or_create_key, new_release
from ingot.spec import ServiceSpec
from ingot.store import ReleaseRow, Store


def _release(store: Store, tmp_path: Path, version: str, **spec: Any) -> ReleaseRow:
    key = load_or_create_key(tmp_path / "keys")
    row = new_release(key=key, project="p", service="web", artifact_digest="sha256:" + version * 64,
                      spec={"command": ["x"], **spec}, config={"values": {}}, actor="tester")
    with store.begin() as conn:
        store.insert_release(conn, row)
    return row


def _activate(store: Store, release: ReleaseRow) -> None:
    with store.begin() as conn:
        store.activate(conn, environment="staging", service="web", release_id=release.id, deployment_id=None,
                       params={})


def test_the_release_command_runs_before_the_first_instance_of_the_new_release(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    new = _release(store, tmp_path, "b", release_command=["python", "migrate.py"], release_command_timeout=30.0)
    plan = plan_blue_green(ServiceState(weights=(("old", 100),), instances=(("old", 2),)), Target(new.id, 2))
    planned = oneoff.with_release_command(plan, store, "staging", new)
    assert [s.kind for s in planned.steps] == ["release_command", *[s.kind for s in plan.steps]]
    assert planned.steps[0].release == new.id and planned.steps[0].seconds == 30.0
    assert "before any of its instances starts" in planned.as_dict()["steps"][0]["description"]
    # Once it succeeded in this environment it is not planned again (a rollback to it), unless asked.
    ledger.record(store, actor="t", action=oneoff.SUCCEEDED, environment="staging", service="web",
                  subject=new.id, payload={})
    assert oneoff.with_release_command(plan, store, "staging", new) == plan
    assert oneoff.with_release_command(plan, store, "staging", new, rerun=True).steps[0].kind == "release_command"
    # In another environment it has not run: it is planned there.
    assert oneoff.with_release_command(plan, store, "production", new).steps[0].kind == "release_command"
    # A release without one, and a plan that starts nothing of the release (a scale-down), get none.
    plain = _release(store, tmp_path, "c")
    assert oneoff.with_release_command(plan_blue_green(ServiceState(), Target(plain.id, 1)), store, "staging",
                                       plain).steps[0].kind == "start"
    down = plan_blue_green(ServiceState(weights=((new.id, 100),), instances=((new.id, 3),)), Target(new.id, 1))
    assert oneoff.with_release_command(down, store, "production", new) == down


def test_spec_keys_are_part_of_the_release_only_when_given() -> None:
    plain = ServiceSpec(command=["python", "app.py"])
    assert "release_command" not in plain.release_fields() and "irreversible" not in plain.release_fields()
    spec = ServiceSpec(command=["python", "app.py"], release_command="python manage.py migrate",
                       release_command_timeout="2m", irreversible=True)
    fields = spec.release_fields()
    assert fields["release_command"] == ["python", "manage.py", "migrate"]
    assert fields["release_command_timeout"] == 120.0 and fields["irreversible"] is True
    with pytest.raises(ValidationError, match="release_command"):
        ServiceSpec(command=["x"], release_command=[])
    with pytest.raises(ValidationError, match="release_command_timeout"):
        ServiceSpec(command=["x"], release_command=["y"], release_command_timeout="0s")


def test_a_rollback_goes_back_past_the_irreversible_releases_live_since_its_target(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    v1 = _release(store, tmp_path, "1")
    v2 = _release(store, tmp_path, "2", irreversible=True)
    v3 = _release(store, tmp_path, "3")
    for row in (v1, v2, v3):
        _activate(store, row)
    assert [r.id for r in oneoff.irreversible_between(store, "staging", v1)] == [v2.id]
    assert oneoff.irreversible_between(store, "staging", v2) == []  # back to it: its migration stays done
    # Marked by `deploy --irreversible` (a ledger entry) counts the same.
    ledger.record(store, actor="t", action=oneoff.IRREVERSIBLE, environment="staging", service="web",
                  subject=v3.id, payload={})
    assert oneoff.irreversible_between(store, "staging", v2) == [v3]
    assert oneoff.irreversible_between(store, "production", v2) == []  # marked for staging only


def test_secret_values_are_masked_in_what_a_one_off_instance_prints() -> None:
    mask = masker(("s3cr3t-token", "abc", "s3cr3t"), mark=oneoff.SECRET_MARK)
    assert mask("token=s3cr3t-token and s3cr3t") == "token=*** and ***"
    assert mask("abc stays: too short to mask without masking everything") == \
        "abc stays: too short to mask without masking everything"
