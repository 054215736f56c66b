"""A release that answers its health path with 500 fails its deploy at once (health.unhealthy_threshold
failing answers in a row), not at the deadline; the failure shows the instance's last log lines with its
secrets masked; the previous release serves throughout."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ExampleProject, answer_health_with, load, make_example, stop_everything


@pytest.fixture
def secretive(tmp_path: Path) -> Iterator[ExampleProject]:
    example = make_example(tmp_path, extra_service_yaml="\n    secrets: [API_KEY]")
    example.env["INGOT_SECRETS_KEY_FILE"] = str(tmp_path / "secret-keys" / "secrets.key")
    yield example
    stop_everything(example)


def test_a_release_answering_500_fails_its_deploy_at_once_with_its_log_tail(secretive: ExampleProject,
                                                                          tmp_path: Path) -> None:
    example = secretive
    secret = f"s3cret-{uuid.uuid4().hex}"
    source = tmp_path / "value"
    source.write_text(secret)
    example.ingot("secret", "set", "API_KEY", "--from-file", str(source), check=True)
    example.ingot("deploy", check=True)
    good = example.get()["release"]
    answer_health_with(example, 500, "broken", printing='"db connect failed with key", os.environ["API_KEY"]')
    with load(example.url, tmp_path) as during:
        failed = example.ingot("deploy")
    assert failed.code == 1, failed.out + failed.err
    assert "answered /healthz with HTTP 500 2 time(s) in a row" in failed.err, failed.err
    assert "without waiting for the 30s deadline" in failed.err
    # The gate itself (not the build, slow on a loaded machine) took a fraction of its 30 s deadline.
    entries = example.ingot("audit", "log", "--json", "--limit", "200", check=True).json
    gate = {e["payload"]["status"]: e["at"] for e in entries
            if e["action"] == "deploy.step" and e["payload"].get("step") == "wait_healthy"}
    assert gate["failed"] - gate["started"] < 10, gate
    # The evidence: the app's own last lines, its secret masked wherever ingot shows or records them.
    assert "last log lines of" in failed.err and "db connect failed with key [secret]" in failed.err
    assert secret not in failed.out + failed.err
    audit = json.dumps(entries)
    assert "db connect failed with key [secret]" in audit and secret not in audit
    # The previous release served every request.
    assert during["failures"] == [], during["failures"][:5]
    assert int(during["requests"]) > 20
    assert example.get()["release"] == good
    assert example.ingot("history", "--json", check=True).json[0]["outcome"] == "failed"
