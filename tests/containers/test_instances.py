"""DockerRuntime instances against the real engine: start, hardening, labels, stop, observe, logs, drift facts."""

from __future__ import annotations

import time

import docker  # type: ignore[import-untyped]
import pytest

from ingot.errors import OperationFailed
from ingot.runtimes.base import Hardening
from ingot.runtimes.docker import DockerRuntime, container_name, without_engine_noise
from tests.containers.helpers import BuiltImage, answering, get_json, new_request, wait_for

# What Podman's inspect lists as CapDrop for `cap_drop=["ALL"]`: its default set, spelled out.
PODMAN_DEFAULT_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETFCAP",
                       "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


def test_start_publishes_the_port_on_localhost_and_the_app_answers(
    runtime: DockerRuntime, app_image: BuiltImage, project: str
) -> None:
    request = new_request(project, app_image.image_id)
    row = runtime.start(request)

    assert (row.runtime, row.host, row.id, row.release_id) == ("docker", "127.0.0.1", request.instance_id,
                                                               request.release_id)
    assert row.handle and row.pid
    page = answering(row.port)
    assert page == {"version": "7", "release": request.release_id, "instance": request.instance_id,
                    "service": "web", "environment": "staging", "port": "8000"}
    assert runtime.observe(row).alive


def test_hardening_is_applied(runtime: DockerRuntime, engine: docker.DockerClient, app_image: BuiltImage,
                              project: str) -> None:
    row = runtime.start(new_request(project, app_image.image_id))
    host_config = engine.containers.get(row.handle).attrs["HostConfig"]

    assert host_config["ReadonlyRootfs"] is True
    cap_drop = set(host_config["CapDrop"] or [])
    assert cap_drop == {"ALL"} or cap_drop >= PODMAN_DEFAULT_CAPS, cap_drop
    assert not host_config.get("CapAdd")
    assert any(opt.startswith("no-new-privileges") for opt in host_config["SecurityOpt"])
    assert "/tmp" in (host_config.get("Tmpfs") or {})
    assert (host_config.get("RestartPolicy") or {}).get("Name") in ("", "no")

    # From inside: the app itself tries to write and reads its own process status.
    answering(row.port)
    inside = get_json(row.port, "/selfcheck")
    assert inside["root_writable"] is False
    assert inside["tmp_writable"] is True
    assert inside["status"]["NoNewPrivs"] == "1"
    assert int(inside["status"]["CapEff"], 16) == 0
    assert int(inside["status"]["CapBnd"], 16) == 0


def test_added_capabilities_are_granted(runtime: DockerRuntime, app_image: BuiltImage, project: str) -> None:
    row = runtime.start(new_request(project, app_image.image_id,
                                    hardening=Hardening(add_capabilities=("NET_BIND_SERVICE",), run_as_non_root=False)))
    answering(row.port)
    assert int(get_json(row.port, "/selfcheck")["status"]["CapEff"], 16) == 1 << 10  # CAP_NET_BIND_SERVICE


def test_labels_name_and_environment(runtime: DockerRuntime, app_image: BuiltImage, project: str) -> None:
    request = new_request(project, app_image.image_id, env={"APP_VERSION": "3", "PORT": "1"})
    row = runtime.start(request)

    facts = runtime.facts(row)
    assert facts is not None
    # The image's own labels (e.g. io.buildah.version) are facts too; ingot's are exactly these.
    ingot_labels = {key: value for key, value in facts.labels.items() if key.startswith("ingot.")}
    assert ingot_labels == {"ingot.project": project, "ingot.environment": "staging", "ingot.service": "web",
                            "ingot.release": request.release_id, "ingot.instance": request.instance_id}
    assert facts.name == container_name(project, "staging", request.instance_id)
    assert facts.name == f"ingot-{project}-staging-{request.instance_id}"
    assert facts.container_id == row.handle
    assert facts.image_id == app_image.image_id
    assert facts.running and facts.exit_code is None
    # ingot's own variables win over a release's variable of the same name.
    assert facts.env["PORT"] == "8000"
    assert facts.env["APP_VERSION"] == "3"
    assert facts.env["INGOT_RELEASE"] == request.release_id
    assert facts.env["INGOT_INSTANCE"] == request.instance_id


def test_stop_is_graceful_and_removes_the_container(runtime: DockerRuntime, app_image: BuiltImage,
                                                    project: str) -> None:
    row = runtime.start(new_request(project, app_image.image_id))
    answering(row.port)

    began = time.monotonic()
    runtime.stop(row, timeout=20)
    # The app exits on SIGTERM: stopping must not have waited for the SIGKILL deadline.
    assert time.monotonic() - began < 10
    # Removal of the exited container happens in the background: poll for it.
    wait_for(lambda: runtime.facts(row) is None, what="the container's removal")
    assert runtime.observe(row).detail == "container is gone"
    assert runtime.labelled(project) == []
    runtime.stop(row, timeout=1)  # stopping what is gone is a no-op


def test_stop_kills_what_ignores_sigterm(runtime: DockerRuntime, app_image: BuiltImage, project: str) -> None:
    # As pid 1 without a handler, sleep ignores SIGTERM: the engine must SIGKILL it after the timeout.
    row = runtime.start(new_request(project, app_image.image_id, command=("sleep", "600")))
    wait_for(lambda: runtime.observe(row).alive, what="sleep to run")

    began = time.monotonic()
    runtime.stop(row, timeout=1)
    assert 0.9 < time.monotonic() - began < 15
    # Removal of the exited container happens in the background: poll for it.
    wait_for(lambda: runtime.facts(row) is None, what="the container's removal")


def test_observe_after_kill_reports_the_exit_code(runtime: DockerRuntime, engine: docker.DockerClient,
                                                  app_image: BuiltImage, project: str) -> None:
    row = runtime.start(new_request(project, app_image.image_id))
    answering(row.port)

    engine.containers.get(row.handle).kill()  # SIGKILL, from outside ingot
    seen = wait_for(lambda: (lambda o: o if not o.alive else None)(runtime.observe(row)),
                    what="the killed container to be seen as dead")
    assert seen.exit_code == 137
    assert seen.detail == "exited with code 137"
    facts = runtime.facts(row)
    assert facts is not None and not facts.running and facts.exit_code == 137


def test_log_tail_has_both_streams_and_the_last_lines(runtime: DockerRuntime, app_image: BuiltImage,
                                                      project: str) -> None:
    row = runtime.start(new_request(project, app_image.image_id))
    answering(row.port)
    for _ in range(3):
        get_json(row.port, "/")

    lines = wait_for(lambda: (lambda t: t if sum("GET / " in x for x in t) >= 3 else None)(runtime.log_tail(row, 50)),
                     what="request lines in the container's log")
    assert any("starting" in line for line in lines)  # stderr
    assert any("listening on 8000" in line for line in lines)  # stdout
    assert runtime.log_tail(row, 2) == lines[-2:]
    assert runtime.log_tail(row, 0) == []


def test_changed_files_sees_writes_and_ignores_engine_noise(runtime: DockerRuntime, app_image: BuiltImage,
                                                            project: str) -> None:
    row = runtime.start(new_request(project, app_image.image_id,
                                    hardening=Hardening(read_only=False, run_as_non_root=False)))
    answering(row.port)
    assert runtime.changed_files(row) == []  # a fresh container: nothing but what the engine wrote

    assert get_json(row.port, "/write?path=/srv/drift.txt")["written"]
    assert get_json(row.port, "/write?path=/tmp/scratch.txt")["written"]
    changes = wait_for(lambda: runtime.changed_files(row), what="the write to show in the container's diff")
    assert ("/srv/drift.txt", "added") in changes
    assert not [path for path, _ in changes if path.startswith(("/tmp", "/run", "/etc"))], changes


def test_engine_noise_filter() -> None:
    raw = [("/etc", "modified"), ("/run", "modified"), ("/run/.containerenv", "added"), ("/tmp", "modified"),
           ("/tmp/x", "added"), ("/srv", "modified"), ("/srv/a", "added"), ("/data", "added"),
           ("/etc/hosts", "modified"), ("/usr/bin/evil", "deleted")]
    assert without_engine_noise(raw, ["/tmp", "/data"]) == [
        ("/srv", "modified"), ("/srv/a", "added"), ("/usr/bin/evil", "deleted")]
    # A change under /etc that is not the engine's keeps /etc, as engines report it.
    assert without_engine_noise([("/etc", "modified"), ("/etc/motd", "modified")], ["/tmp"]) == [
        ("/etc", "modified"), ("/etc/motd", "modified")]
    # A volume at a nested path: Podman reports every directory above it modified (self-heal used to
    # replace such a container every pass for that); a change of the instance's own beside it keeps /var.
    nested = [("/etc", "modified"), ("/var", "modified"), ("/var/lib", "modified"), ("/var/lib/queue", "added")]
    assert without_engine_noise(nested, ["/tmp", "/var/lib/queue"]) == []
    assert without_engine_noise([*nested, ("/var/log", "modified"), ("/var/log/x", "added")],
                                ["/tmp", "/var/lib/queue"]) == [
        ("/var", "modified"), ("/var/log", "modified"), ("/var/log/x", "added")]


def test_labelled_finds_stray_containers_of_the_project_only(
    runtime: DockerRuntime, engine: docker.DockerClient, app_image: BuiltImage, project: str
) -> None:
    row = runtime.start(new_request(project, app_image.image_id))
    # Strays: labelled by someone else, never started; and one of another project that must not appear.
    stray = engine.containers.create(app_image.image_id, labels={"ingot.project": project, "ingot.instance": "x"})
    other = engine.containers.create(app_image.image_id, labels={"ingot.project": project + "-other"})
    try:
        found = {facts.container_id: facts for facts in runtime.labelled(project)}
        assert set(found) == {row.handle, stray.id}
        assert found[row.handle].running
        assert not found[stray.id].running and found[stray.id].labels["ingot.instance"] == "x"
    finally:
        other.remove(force=True)


def test_start_with_a_missing_image_names_the_instance(runtime: DockerRuntime, project: str) -> None:
    request = new_request(project, "sha256:" + "0" * 64)
    with pytest.raises(OperationFailed) as failure:
        runtime.start(request)
    assert request.instance_id in failure.value.message
    assert "not in the container engine" in failure.value.message
    assert runtime.labelled(project) == []


def test_a_container_that_exits_at_once_fails_start_with_its_log(runtime: DockerRuntime, app_image: BuiltImage,
                                                                 project: str) -> None:
    request = new_request(project, app_image.image_id,
                          command=("python3", "-c", "print('bad config', flush=True); raise SystemExit(3)"))
    try:
        row = runtime.start(request)
    except OperationFailed as failure:
        # Exited before its port was read: the failure says how, with the log, and leaves nothing behind.
        assert "exited at once with code 3" in failure.message
        assert "  | bad config" in failure.details
        assert runtime.labelled(project) == []
        return
    # Or it exited just after: then observe says so.
    seen = wait_for(lambda: (lambda o: o if not o.alive else None)(runtime.observe(row)), what="the exit")
    assert (seen.exit_code, seen.detail) == (3, "exited with code 3")
    runtime.stop(row, timeout=1)
    # Removal of the exited container happens in the background: poll for it.
    wait_for(lambda: runtime.facts(row) is None, what="the container's removal")
