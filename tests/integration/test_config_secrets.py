"""Config and secrets end to end: set, deploy, the running app sees them; every change is a new release on
fresh instances; rollback brings the old values back; and a secret's value shows up nowhere ingot writes."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ExampleProject, Result, make_example, stop_everything

# The example app, made to answer with its config value and the hash and length of its secret: never the
# secret itself, so that the leak search below only finds a leak of ingot's own.
SEES = ('"greeting": GREETING, "flag": os.environ.get("FEATURE_FLAG"), '
        '"secret_sha256": hashlib.sha256(os.environ.get("API_KEY", "").encode()).hexdigest(), '
        '"secret_len": len(os.environ.get("API_KEY", "")),')


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[ExampleProject]:
    example = make_example(tmp_path, replicas=1,
                           extra_service_yaml="\n    config: [FEATURE_FLAG]\n    secrets: [API_KEY]")
    app = example.root / "app.py"
    text = app.read_text().replace('"greeting": GREETING,', SEES)
    app.write_text(text.replace("import json\n", "import hashlib\nimport json\n"))
    # The key lives apart from the state directory, as it would on a real machine.
    example.env["INGOT_SECRETS_KEY_FILE"] = str(tmp_path / "secret-keys" / "secrets.key")
    yield example
    stop_everything(example)


def set_secret(example: ExampleProject, name: str, value: str, tmp_path: Path) -> Result:
    # From a file outside the project: a file inside it would be part of the build context.
    source = tmp_path / f"value-{uuid.uuid4().hex}"
    source.write_text(value + "\n")
    try:
        return example.ingot("secret", "set", name, "--from-file", str(source), check=True)
    finally:
        source.unlink()


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def instance_ids(example: ExampleProject) -> set[str]:
    return {i["id"] for i in example.ingot("status", "--json", check=True).json["services"][0]["instances"]}


def test_values_reach_instances_changes_make_new_releases_and_rollback_restores(configured: ExampleProject,
                                                                                tmp_path: Path) -> None:
    example = configured
    old_secret, new_secret = f"old-{uuid.uuid4().hex}", f"new-{uuid.uuid4().hex}"
    example.ingot("config", "set", "FEATURE_FLAG", "blue", check=True)
    set_secret(example, "API_KEY", old_secret, tmp_path)
    example.ingot("deploy", check=True)
    first = example.get()
    assert (first["flag"], first["secret_sha256"], first["secret_len"]) == ("blue", sha(old_secret), len(old_secret))
    first_instances = instance_ids(example)
    assert "nothing changed" in example.ingot("deploy", check=True).out

    # A config change is a new release on new instances, never a patch of the running ones.
    example.ingot("config", "set", "FEATURE_FLAG", "green", check=True)
    example.ingot("deploy", check=True)
    second = example.get()
    assert (second["flag"], second["secret_sha256"]) == ("green", sha(old_secret))
    assert second["release"] != first["release"] and not instance_ids(example) & first_instances

    # So is a secret change.
    set_secret(example, "API_KEY", new_secret, tmp_path)
    example.ingot("deploy", check=True)
    third = example.get()
    assert (third["flag"], third["secret_sha256"]) == ("green", sha(new_secret))
    assert third["release"] not in (first["release"], second["release"])

    # Rolling back brings back the values the earlier release snapshotted.
    example.ingot("rollback", check=True)
    back = example.get()
    assert (back["release"], back["flag"], back["secret_sha256"]) == (second["release"], "green", sha(old_secret))
    example.ingot("rollback", "--to", first["release"], check=True)
    assert (example.get()["flag"], example.get()["release"]) == ("blue", first["release"])

    # A removed secret refuses new releases (naming it, the environment and the command), but the releases
    # made before keep their versions: rolling forward to one of them still works.
    example.ingot("secret", "rm", "API_KEY", check=True)
    example.ingot("config", "set", "FEATURE_FLAG", "red", check=True)
    refused = example.ingot("deploy")
    assert refused.code == 2 and "ingot secret set API_KEY --env staging" in refused.err, refused.err
    assert example.get()["release"] == first["release"]
    example.ingot("rollback", "--to", third["release"], check=True)
    assert example.get()["secret_sha256"] == sha(new_secret)

    releases = [e for e in example.ingot("audit", "log", "--json", "--limit", "1000", check=True).json
                if e["action"] == "release"]
    assert [e["payload"]["secrets"] for e in releases] == [{"API_KEY": 1}, {"API_KEY": 1}, {"API_KEY": 2}]
    assert "ledger intact" in example.ingot("audit", "verify", check=True).out


def test_a_secret_value_appears_nowhere_ingot_writes_or_prints(configured: ExampleProject, tmp_path: Path) -> None:
    example = configured
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("replicas: 1", "replicas: 2"))
    secret = f"leak-canary-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    outputs = [example.ingot("config", "set", "FEATURE_FLAG", "one", check=True),
               set_secret(example, "API_KEY", secret, tmp_path),
               example.ingot("deploy", check=True)]
    assert example.get()["secret_sha256"] == sha(secret)  # the instances do have it
    # More of ingot's paths: a new release and its instances, drift checks that compare the secret, a rollback.
    example.ingot("config", "set", "FEATURE_FLAG", "two", check=True)
    outputs += [example.ingot("deploy", check=True), example.ingot("drift", "--json")]
    assert outputs[-1].code == 0 and outputs[-1].json == [], outputs[-1].out  # a matching secret is no drift
    outputs += [example.ingot("reconcile", check=True), example.ingot("rollback", check=True)]
    assert example.get()["secret_sha256"] == sha(secret)
    for args in (("audit", "log", "--json", "--limit", "100000"), ("audit", "log"), ("status", "--json"),
                 ("status",), ("history", "--json"), ("history",), ("plan", "--json"), ("logs", "web"),
                 ("secret", "list", "--json"), ("secret", "history", "--json"), ("config", "list", "--json")):
        outputs.append(example.ingot(*args, check=True))
    for result in outputs:
        assert secret not in result.out and secret not in result.err

    state = example.state
    assert (state / "state.db-wal").exists()  # the agent holds the store open: the WAL is searched too
    leaks = _files_holding(state, secret)
    example.ingot("down", check=True)
    leaks += _files_holding(state, secret)
    assert leaks == []
    assert (state / "agent.log").stat().st_size > 0 and list((state / "logs").rglob("*.log"))


def _files_holding(root: Path, text: str) -> list[str]:
    """Every file under `root` (database, WAL, agent log, instance logs, artifacts, checkouts) holding `text`."""
    needle = text.encode()
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    assert any(p.name == "state.db" for p in root.rglob("*")), os.listdir(root)
    return found
