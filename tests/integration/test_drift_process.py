"""Drift on the process runtime, injected for real, found with evidence and repaired by replacement."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ingot.runtimes.process import process_environment
from tests.support.harness import ExampleProject, load, manual_repair, poll


@pytest.fixture(autouse=True)
def _no_self_heal(example: ExampleProject) -> None:
    """These tests inject drift and watch `ingot drift` and `ingot reconcile` deal with it: the agent must
    not repair it first on its own (tests/integration/test_self_heal.py covers that)."""
    manual_repair(example)


def instances(example: ExampleProject) -> list[dict[str, object]]:
    return list(example.ingot("status", "--json", check=True).json["services"][0]["instances"])


def drift(example: ExampleProject) -> tuple[int, list[dict[str, object]]]:
    result = example.ingot("drift", "--json")
    return result.code, list(result.json)


def test_clean_deploy_has_no_drift(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    assert drift(example) == (0, [])
    assert "no drift" in example.ingot("drift").out


def test_killed_instance_is_found_and_replaced_without_failed_requests(example: ExampleProject,
                                                                       tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    victim = instances(example)[0]
    os.killpg(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    code, findings = poll(lambda: (d := drift(example))[1] and d, timeout=20, what="drift to show")
    assert code == 1
    assert {f["kind"] for f in findings} <= {"exited", "missing"}
    with load(example.url, tmp_path) as during:
        result = example.ingot("reconcile", check=True)
    assert "started 1 fresh instance" in result.out
    assert during["failures"] == [] and int(during["requests"]) > 20
    now = instances(example)
    assert len(now) == 2 and victim["id"] not in {i["id"] for i in now}
    assert all(i["health"] == "healthy" for i in now)
    assert drift(example) == (0, [])
    actions = [e["action"] for e in example.ingot("audit", "log", "--json", "--limit", "1000").json]
    assert "drift.found" in actions and "drift.repair" in actions


def test_edited_artifact_is_found_with_the_file_and_replaced_from_the_store(example: ExampleProject,
                                                                            tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    before = instances(example)
    run_dir = Path(os.readlink(f"/proc/{before[0]['pid']}/cwd"))
    app = run_dir / "app.py"
    app.chmod(0o644)
    app.write_text(app.read_text() + "\n# someone was here\n")
    code, findings = drift(example)
    assert code == 1
    changed = [f for f in findings if f["kind"] == "changed_files"]
    # Both instances run from the same checkout, so both are found, each naming the file.
    assert {f["instance"] for f in changed} == {i["id"] for i in before}
    assert changed[0]["evidence"]["files"] == ["modified: app.py"]
    with load(example.url, tmp_path) as during:
        example.ingot("reconcile", check=True)
    assert during["failures"] == []
    after = instances(example)
    assert not {i["id"] for i in after} & {i["id"] for i in before}
    assert not run_dir.exists()  # the tampered checkout is gone with its last instance
    new_dir = Path(os.readlink(f"/proc/{after[0]['pid']}/cwd"))
    assert "someone was here" not in (new_dir / "app.py").read_text()
    assert drift(example) == (0, [])


def test_stray_labelled_process_is_found_and_stopped(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    live = instances(example)[0]
    env = process_environment(int(live["pid"]))  # type: ignore[call-overload]
    assert env is not None
    env.update({"INGOT_INSTANCE": "web-stray-000000", "PORT": "0"})
    cwd = os.readlink(f"/proc/{live['pid']}/cwd")
    stray = subprocess.Popen([sys.executable, "app.py"], cwd=cwd, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code, findings = poll(lambda: (d := drift(example))[1] and d, timeout=20, what="the stray")
        assert code == 1
        [finding] = findings
        assert finding["kind"] == "unknown" and finding["instance"] == "web-stray-000000"
        assert finding["evidence"]["ident"] == str(stray.pid)
        example.ingot("reconcile", check=True)
        stray.wait(timeout=15)
        assert drift(example) == (0, [])
        assert len(instances(example)) == 2
    finally:
        if stray.poll() is None:
            stray.kill()


def test_hung_instance_is_unhealthy_and_replaced(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    hung = instances(example)[1]
    os.kill(int(hung["pid"]), signal.SIGSTOP)  # type: ignore[call-overload]
    code, findings = drift(example)
    assert code == 1
    [finding] = findings
    assert finding["kind"] == "unhealthy" and finding["instance"] == hung["id"]
    assert finding["evidence"]["probe"] in ("ReadTimeout", "ConnectTimeout")
    example.ingot("reconcile", check=True)
    assert hung["id"] not in {i["id"] for i in instances(example)}
    assert drift(example) == (0, [])


def test_corrupted_store_copy_is_reported_not_repaired(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    objects = example.state / "artifacts" / "objects"
    [obj] = list(objects.iterdir())
    target = obj / "app.py"
    obj.chmod(0o755)
    target.chmod(0o644)
    target.write_text("print('tampered')\n")
    code, findings = drift(example)
    assert code == 1 and [f["kind"] for f in findings] == ["artifact_corrupt"]
    assert "app.py" in findings[0]["evidence"]["problem"]
    result = example.ingot("reconcile")
    assert result.code == 1 and "corrupt" in result.err
    shutil.rmtree(example.state / "artifacts" / "inputs", ignore_errors=True)


def test_an_edit_is_found_at_once_between_full_rehashes_even_with_size_and_mtime_put_back(
        example: ExampleProject) -> None:
    example.env["INGOT_REHASH_INTERVAL"] = "1h"  # every pass below takes the stat path unless a fingerprint moved
    example.ingot("deploy", check=True)
    assert drift(example) == (0, [])  # the trees are hashed once here: what the fingerprints are taken against
    run_dir = Path(os.readlink(f"/proc/{instances(example)[0]['pid']}/cwd"))
    app = run_dir / "app.py"
    before = app.stat()
    text = app.read_text()
    app.chmod(0o644)
    app.write_text(text.replace("VERSION", "VERSIOn", 1))  # same size
    os.utime(app, ns=(before.st_atime_ns, before.st_mtime_ns))  # `touch -r`: the same mtime
    code, findings = drift(example)
    assert code == 1 and {f["kind"] for f in findings} == {"changed_files"}, findings
    assert findings[0]["evidence"]["files"] == ["modified: app.py"]

    [obj] = list((example.state / "artifacts" / "objects").iterdir())
    stored = obj / "app.py"
    mtime = stored.stat().st_mtime_ns
    stored.chmod(0o644)
    stored.write_text(stored.read_text().replace("VERSION", "VERSIOn", 1))
    os.utime(stored, ns=(mtime, mtime))
    code, findings = drift(example)
    assert code == 1 and "artifact_corrupt" in {f["kind"] for f in findings}, findings
