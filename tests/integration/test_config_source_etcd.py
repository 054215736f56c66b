"""Config values from a real etcd (Debian's etcd-server): read at deploy time into the release, so a change in
etcd is a new release and a rollback brings the old value back; a missing key or an unreachable etcd refuses
the deploy with the previous release serving."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.harness import ExampleProject, free_port, load, make_example, poll, stop_everything

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd (apt-get install etcd-server)")


class Etcd:
    """One etcd member on free local ports, in a data directory of its own; restartable on the same data."""

    def __init__(self, data: Path) -> None:
        self.data, self.port, self.peer = data, free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        client, peer = self.url, f"http://127.0.0.1:{self.peer}"
        self.proc = subprocess.Popen(
            ["etcd", "--name", "test", "--data-dir", str(self.data), "--listen-client-urls", client,
             "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}"],
            stdout=subprocess.DEVNULL, stderr=(self.data.parent / "etcd.log").open("ab"), start_new_session=True)
        poll(lambda: httpx.get(self.url + "/health", timeout=1, trust_env=False).json()["health"] == "true",
             timeout=20, what="etcd to answer")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(self.url + path, json=body, timeout=5, trust_env=False)
        response.raise_for_status()
        return dict(response.json())

    def put(self, key: str, value: str) -> int:
        answer = self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(answer["header"]["revision"])

    def delete(self, key: str) -> None:
        self.call("/v3/kv/deleterange", {"key": _b64(key)})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    server = Etcd(tmp_path_factory.mktemp("etcd") / "data")
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


@pytest.fixture
def sourced(tmp_path: Path, etcd: Etcd) -> Iterator[tuple[ExampleProject, str]]:
    """The example, its staging environment reading FEATURE_FLAG from etcd under a prefix of its own."""
    example = make_example(tmp_path, replicas=1, extra_service_yaml="\n    config: [FEATURE_FLAG]")
    app = example.root / "app.py"
    app.write_text(app.read_text().replace('"greeting": GREETING,',
                                           '"greeting": GREETING, "flag": os.environ.get("FEATURE_FLAG"),'))
    prefix = f"/apps/hello-{uuid.uuid4().hex[:8]}/"
    # A dead endpoint first: reads go on to the next one.
    endpoints = f"[http://127.0.0.1:{free_port()}, {etcd.url}]"
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace(
        "  staging: {}", f"  staging:\n    config_source: {{etcd: {{endpoints: {endpoints}, prefix: {prefix}}}}}"))
    yield example, prefix
    stop_everything(example)


def releases_in_ledger(example: ExampleProject) -> list[dict[str, Any]]:
    return [e for e in example.ingot("audit", "log", "--json", "--limit", "1000", check=True).json
            if e["action"] == "release"]


def test_values_come_from_etcd_a_change_is_a_new_release_and_rollback_restores(
        sourced: tuple[ExampleProject, str], etcd: Etcd) -> None:
    example, prefix = sourced
    first_revision = etcd.put(prefix + "FEATURE_FLAG", "blue")
    example.ingot("deploy", check=True)
    first = example.get()
    assert first["flag"] == "blue"
    recorded = releases_in_ledger(example)[-1]["payload"]["config_source"]
    assert recorded["endpoints"][1] == etcd.url and recorded["prefix"] == prefix
    assert (recorded["revision"], recorded["keys"]) == (first_revision, {"FEATURE_FLAG": first_revision})
    unrelated = etcd.put(prefix + "OTHER", "x")  # a key no service lists: no new release
    assert "nothing changed" in example.ingot("deploy", check=True).out

    second_revision = etcd.put(prefix + "FEATURE_FLAG", "green")
    diff = example.ingot("config", "diff", "--json", check=True).json
    assert diff["source"]["revision"] == second_revision > unrelated
    [web] = diff["services"]
    assert (web["release"], web["release_revision"]) == (first["release"], first_revision)
    assert [(c["key"], c["status"], c["live"], c["source"]) for c in web["changes"]] == [
        ("FEATURE_FLAG", "changed", "blue", "green")]
    shown = example.ingot("config", "diff", check=True).out
    assert "FEATURE_FLAG" in shown and "blue" in shown and "green" in shown, shown

    example.ingot("deploy", check=True)
    second = example.get()
    assert second["flag"] == "green" and second["release"] != first["release"]
    assert releases_in_ledger(example)[-1]["payload"]["config_source"]["revision"] == second_revision
    assert "no source keys changed" in example.ingot("config", "diff", check=True).out

    # The old value is in the old release, not in etcd: a rollback brings it back while etcd says green.
    example.ingot("rollback", check=True)
    assert (example.get()["flag"], example.get()["release"]) == ("blue", first["release"])

    # A key in both etcd and ingot's own store: refused, naming both, never one silently shadowing the other.
    example.ingot("config", "set", "FEATURE_FLAG", "local", check=True)
    both = example.ingot("deploy")
    assert both.code == 2 and f"{prefix}FEATURE_FLAG" in both.err and "config store" in both.err, both.err


def test_a_missing_key_or_a_secret_in_etcd_is_refused_and_the_live_release_keeps_serving(
        sourced: tuple[ExampleProject, str], etcd: Etcd) -> None:
    example, prefix = sourced
    etcd.put(prefix + "FEATURE_FLAG", "blue")
    example.ingot("deploy", check=True)
    live = example.get()["release"]
    etcd.delete(prefix + "FEATURE_FLAG")
    missing = example.ingot("deploy")
    assert missing.code == 2 and f"{prefix}FEATURE_FLAG is not in etcd" in missing.err, missing.err
    assert "Traceback" not in missing.err
    assert example.get()["release"] == live

    etcd.put(prefix + "FEATURE_FLAG", "blue")
    etcd.put(prefix + "API_KEY", "plaintext")
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("config: [FEATURE_FLAG]",
                                             "config: [FEATURE_FLAG]\n    secrets: [API_KEY]"))
    secret = example.ingot("deploy")
    assert secret.code == 2 and "never supplies secrets" in secret.err, secret.err
    assert f"{prefix}API_KEY" in secret.err
    assert example.get()["release"] == live


def test_etcd_down_fails_the_deploy_and_the_previous_release_serves_under_load(
        sourced: tuple[ExampleProject, str], etcd: Etcd, tmp_path: Path) -> None:
    example, prefix = sourced
    etcd.put(prefix + "FEATURE_FLAG", "blue")
    example.ingot("deploy", check=True)
    live = example.get()["release"]
    example.set_version("2")  # a deploy would make a new release, if it could read its config
    try:
        with load(example.url, tmp_path) as report:
            etcd.kill()
            failed = example.ingot("deploy")
        assert failed.code == 1, failed.err
        assert "etcd is unreachable" in failed.err and etcd.url in failed.err and "Traceback" not in failed.err
        assert report["failures"] == [] and int(report["requests"]) > 20, report["failures"][:5]
        assert example.get()["release"] == live
        status = example.ingot("status", "--json", check=True).json["services"][0]
        assert status["release"] == live and len(status["instances"]) == 1, status
        [entry] = [e for e in example.ingot("audit", "log", "--json", check=True).json
                   if e["action"] == "config_source.fail"]
        assert entry["service"] == "web" and entry["payload"]["endpoints"][1] == etcd.url, entry
        assert len(entry["payload"]["details"]) == 2, entry  # each endpoint's failure
    finally:
        etcd.start()
    example.ingot("deploy", check=True)
    assert example.get()["version"] == "2"


def test_a_bad_config_source_is_refused_naming_the_key(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace(
        "  staging: {}", "  staging:\n    config_source: {etcd: {endpoints: ['127.0.0.1:2379'], prefix: /a/}}"))
    bad = example.ingot("validate")
    assert bad.code == 2 and "environments.staging.config_source.etcd.endpoints[0]" in bad.err, bad.err
    spec.write_text(spec.read_text().replace("{etcd: {endpoints: ['127.0.0.1:2379'], prefix: /a/}}", "{}"))
    empty = example.ingot("validate")
    assert empty.code == 2 and "environments.staging.config_source: expected one source kind" in empty.err, empty.err


def test_ingot_watch_deploys_a_change_in_etcd_through_the_usual_deploy(
        sourced: tuple[ExampleProject, str], etcd: Etcd) -> None:
    example, prefix = sourced
    (example.root / ".gitignore").write_text(".ingot/\n__pycache__/\n")
    for args in (("init", "--quiet", "-b", "main"), ("add", "-A"), ("commit", "--quiet", "-m", "one")):
        subprocess.run(["git", "-C", str(example.root), *args], check=True, capture_output=True, timeout=60,
                       env={**os.environ, "GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.org",
                            "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.org"})
    watch = ("watch", ".", "--branch", "main", "--env", "staging", "--once", "--json")
    etcd.put(prefix + "FEATURE_FLAG", "blue")
    assert '"deployed"' in example.ingot(*watch, check=True).out.strip().splitlines()[-1]
    first = example.get()
    assert first["flag"] == "blue"
    assert '"unchanged"' in example.ingot(*watch, check=True).out.strip().splitlines()[-1]

    revision = etcd.put(prefix + "FEATURE_FLAG", "green")
    last = example.ingot(*watch, check=True).out.strip().splitlines()[-1]
    assert '"deployed"' in last and f"config source changed (revision {revision})" in last, last
    assert example.get()["flag"] == "green" and example.get()["release"] != first["release"]
    deploys = [e for e in example.ingot("audit", "log", "--json", check=True).json if e["action"] == "watch.deploy"]
    assert deploys[-1]["payload"]["config_source"]["revision"] == revision
    assert '"unchanged"' in example.ingot(*watch, check=True).out.strip().splitlines()[-1]
