"""The container runtime end to end, through the CLI, against the real engine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker  # type: ignore[import-untyped]
import pytest
from docker.errors import NotFound  # type: ignore[import-untyped]

from tests.integration.test_logs_follow import follow_across_a_deploy
from tests.support.engines import remove_project_containers
from tests.support.harness import (
    ExampleProject,
    load,
    make_container_example,
    manual_repair,
    poll,
    stop_everything,
)


def _project_name(example: ExampleProject) -> str:
    return (example.root / "ingot.yaml").read_text().split("project: ", 1)[1].split()[0]


@pytest.fixture
def boxed(engine: docker.DockerClient, tmp_path: Path) -> Iterator[ExampleProject]:
    example = make_container_example(tmp_path)
    yield example
    stop_everything(example)
    remove_project_containers(engine, _project_name(example))


def containers(engine: docker.DockerClient, example: ExampleProject) -> list[object]:
    return list(engine.containers.list(filters={"label": f"ingot.project={_project_name(example)}"}))


def instances(example: ExampleProject) -> list[dict[str, object]]:
    return list(example.ingot("status", "--json", check=True).json["services"][0]["instances"])


def test_deploy_change_rollback_hardened_with_zero_failed_requests(
        engine: docker.DockerClient, boxed: ExampleProject, tmp_path: Path) -> None:
    first = boxed.ingot("deploy", check=True)
    assert "Successfully" in first.out or "STEP" in first.out  # build output shown live
    release_one = boxed.get()["release"]
    [box, _] = containers(engine, boxed)
    attrs = box.attrs  # type: ignore[attr-defined]
    host = attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    dropped = {c.upper().removeprefix("CAP_") for c in host["CapDrop"]}
    # Docker keeps "ALL"; Podman expands it to every capability of its default set.
    assert dropped == {"ALL"} or {"CHOWN", "KILL", "NET_RAW", "SETUID", "SETGID", "NET_BIND_SERVICE"} <= dropped
    assert not host.get("CapAdd")
    assert any("no-new-privileges" in opt for opt in host["SecurityOpt"])
    assert "/tmp" in host["Tmpfs"]
    bindings = attrs["NetworkSettings"]["Ports"]["8000/tcp"]
    assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}
    labels = attrs["Config"]["Labels"]
    assert labels["ingot.release"] == release_one and labels["ingot.service"] == "web"
    assert attrs["Image"].removeprefix("sha256:") in boxed.ingot("history", "--json").json[0]["artifact"]

    boxed.set_version("2")
    with load(boxed.url, tmp_path) as during_deploy:
        boxed.ingot("deploy", check=True)
    assert during_deploy["failures"] == [] and set(during_deploy["versions"]) <= {"1", "2"}
    assert boxed.get()["version"] == "2"
    with load(boxed.url, tmp_path) as during_rollback:
        boxed.ingot("rollback", check=True)
    assert during_rollback["failures"] == [] and int(during_rollback["requests"]) > 50
    assert boxed.get()["release"] == release_one
    assert len(containers(engine, boxed)) == 2  # the retired release's containers are gone
    tags = engine.images.get(attrs["Image"]).tags
    assert any(tag.endswith(f":{release_one}") for tag in tags)


def test_failed_health_gate_keeps_the_old_release(engine: docker.DockerClient, boxed: ExampleProject) -> None:
    boxed.ingot("deploy", check=True)
    good = boxed.get()["release"]
    app = boxed.root / "app.py"
    app.write_text(app.read_text().replace('self._send(200, b"ok\\n", "text/plain")',
                                           'self._send(500, b"broken\\n", "text/plain")'))
    spec = boxed.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("deadline: 30s", "deadline: 2s"))
    failed = boxed.ingot("deploy")
    assert failed.code == 1 and "did not become healthy" in failed.err
    assert f"still serving: release {good}" in failed.err
    assert boxed.get()["release"] == good
    assert {c.labels["ingot.release"] for c in containers(engine, boxed)} == {good}  # type: ignore[attr-defined]


def test_logs_follow_streams_across_a_deploy(boxed: ExampleProject) -> None:
    follow_across_a_deploy(boxed)


def test_mutable_tag_is_refused(boxed: ExampleProject) -> None:
    spec = boxed.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("    build: .\n", "    image: localhost/ingot-base:bookworm\n"
                                                                "    command: [python3, -m, http.server]\n"))
    result = boxed.ingot("deploy")
    assert result.code == 2
    assert "mutable" in result.err.lower() and "allow_mutable_tag" in result.err
    assert "Traceback" not in result.err


def test_container_drift_injected_and_repaired(engine: docker.DockerClient, tmp_path: Path) -> None:
    example = make_container_example(
        tmp_path, extra_service_yaml="    security: {read_only: false, reason: the drift test writes into it}\n")
    manual_repair(example)  # drift is injected here for `ingot drift` and `ingot reconcile`, not for self-heal
    try:
        example.ingot("deploy", check=True)
        status = example.ingot("status", "--json", check=True).json["services"][0]
        assert status["hardening"] == {"relaxed": ["read_only"], "reason": "the drift test writes into it"}
        assert example.ingot("drift").code == 0

        # A file written into a running container, and a container killed.
        [written, killed] = containers(engine, example)
        done = written.exec_run(["sh", "-c", "echo tampered > /app/extra.txt"], user="root")  # type: ignore[attr-defined]
        assert done.exit_code == 0, done.output
        killed.kill()  # type: ignore[attr-defined]
        # A stray container carrying ingot's labels.
        image = written.attrs["Image"]  # type: ignore[attr-defined]
        project = _project_name(example)
        stray = engine.containers.run(image, detach=True, labels={
            "ingot.project": project, "ingot.environment": "staging", "ingot.service": "web",
            "ingot.release": "r-stray", "ingot.instance": "web-stray-0"})
        result = poll(lambda: (r := example.ingot("drift", "--json")).code == 1 and len(r.json) >= 3 and r,
                      timeout=30, what="three findings")
        kinds = {(f["kind"], f["instance"]) for f in result.json}
        written_id = written.labels["ingot.instance"]  # type: ignore[attr-defined]
        killed_id = killed.labels["ingot.instance"]  # type: ignore[attr-defined]
        assert ("changed_files", written_id) in kinds
        assert ("unknown", "web-stray-0") in kinds
        assert ("exited", killed_id) in kinds
        exited = next(f for f in result.json if f["kind"] == "exited")
        assert "exited" in exited["evidence"]["detail"] and exited["evidence"]["last_log_lines"]
        changed = next(f for f in result.json if f["kind"] == "changed_files")
        assert any("/app/extra.txt" in line for line in changed["evidence"]["files"])

        with load(example.url, tmp_path) as during:
            example.ingot("reconcile", check=True)
        assert during["failures"] == []
        assert example.ingot("drift").code == 0
        now = {c.labels["ingot.instance"] for c in containers(engine, example)}  # type: ignore[attr-defined]
        assert len(now) == 2 and not now & {written_id, killed_id, "web-stray-0"}
        with pytest.raises(NotFound):
            engine.containers.get(stray.id)
    finally:
        stop_everything(example)
        remove_project_containers(engine, _project_name(example))


def test_prune_keeps_rollback_images(engine: docker.DockerClient, boxed: ExampleProject) -> None:
    spec = boxed.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("    stop_timeout: 5s\n", "    stop_timeout: 5s\n    retention: 2\n"))
    images, releases = [], []
    for version in ("1", "2", "3"):
        boxed.set_version(version)
        boxed.ingot("deploy", check=True)
        latest = boxed.ingot("history", "--json", check=True).json[0]
        images.append(latest["artifact"])
        releases.append(latest["release"])
    # Identical builds share an image ID across projects: another project may hold the first image.
    other = engine.containers.create(images[0], labels={"ingot.test": "another project"})
    try:
        pruned = boxed.ingot("prune", "--json", check=True).json
        assert pruned["removed"] == [images[0]]
        assert "the image stays" in pruned["outcomes"][images[0]] and "container" in pruned["outcomes"][images[0]]
        assert not [t for t in engine.images.get(images[0]).tags if t.endswith(f":{releases[0]}")]
    finally:
        other.remove(force=True)
    assert engine.images.get(images[1]) and engine.images.get(images[2])
    boxed.ingot("rollback", check=True)
    assert boxed.get()["version"] == "2"


def test_resources_and_user_from_the_spec_reach_the_engine(engine: docker.DockerClient, tmp_path: Path) -> None:
    example = make_container_example(tmp_path, replicas=1, extra_service_yaml=(
        "    resources: {limits: {memory: 128Mi, cpu: \"0.5\"}, requests: {cpu: 250m}}\n"
        "    security: {run_as_user: 12345}\n"))
    try:
        example.ingot("deploy", check=True)
        [box] = containers(engine, example)
        attrs = box.attrs  # type: ignore[attr-defined]
        host = attrs["HostConfig"]
        assert (host["Memory"], host["NanoCpus"], host["CpuShares"]) == (128 * 2**20, 500_000_000, 256)
        assert attrs["Config"]["User"] == "12345"
        done = box.exec_run(["id", "-u"])  # type: ignore[attr-defined]
        assert done.output.decode().strip() == "12345"
    finally:
        stop_everything(example)


def test_a_root_image_is_refused_and_says_how_to_fix_it(engine: docker.DockerClient, boxed: ExampleProject) -> None:
    containerfile = boxed.root / "Containerfile"
    containerfile.write_text(containerfile.read_text().replace("USER 65534:65534\n", ""))
    result = boxed.ingot("deploy")
    assert result.code == 1, result.err
    assert "runs as root" in result.err and "run_as_non_root" in result.err and "run_as_user" in result.err
    assert "Traceback" not in result.err
    assert containers(engine, boxed) == []


def test_release_command_and_ingot_run_in_one_off_containers(engine: docker.DockerClient, tmp_path: Path) -> None:
    migrate = "import os, sys; print('migrating', os.environ['INGOT_RELEASE'], os.getuid()); sys.exit(0)"
    example = make_container_example(tmp_path, replicas=1, extra_service_yaml=(
        f'    release_command: [python3, -c, "{migrate}"]\n'))
    try:
        deployed = example.ingot("deploy", check=True)
        live = example.get()["release"]
        assert f"| migrating {live}" in deployed.out and " 0\n" not in deployed.out, deployed.out
        before = {b.id for b in containers(engine, example)}  # type: ignore[attr-defined]
        ran = example.ingot("run", "web", "--", "python3", "-c",
                            "import os, sys; print('hi from', os.environ['INGOT_RELEASE']); sys.exit(5)")
        assert ran.code == 5 and f"hi from {live}" in ran.out, ran.out + ran.err
        # Its output is shown as it is written, not once the command has ended.
        env = {**os.environ, "INGOT_ACTOR": "tester@ci", **example.env}
        env.pop("INGOT_HOME", None)
        script = "import time; print('early', flush=True); time.sleep(5); print('late')"
        process = subprocess.Popen([sys.executable, "-m", "ingot", "run", "web", "--", "python3", "-c", script],
                                   cwd=example.root, env=env, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        try:
            assert process.stdout is not None
            while (line := process.stdout.readline()) and line.strip() != "early":
                pass
            early = time.monotonic()
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert line.strip() == "early" and process.returncode == 0, err
        assert "late" in out and time.monotonic() - early > 3, "the line came only when the command ended"
        # The caller's stdin is the command's, to its end.
        piped = subprocess.run([sys.executable, "-m", "ingot", "run", "web", "--", "python3", "-c",
                                "import sys; print(sys.stdin.read().upper(), end='')"], input="piped\nin\n",
                               cwd=example.root, env=env, text=True, capture_output=True, timeout=60)
        assert piped.returncode == 0 and "PIPED\nIN\n" in piped.stdout, piped.stdout + piped.stderr
        # The serving container is untouched, and the one-off one is gone.
        poll(lambda: {b.id for b in containers(engine, example)} == before,  # type: ignore[attr-defined]
             timeout=20, what="only the serving container left")
        assert example.get()["release"] == live
    finally:
        stop_everything(example)
        remove_project_containers(engine, _project_name(example))
