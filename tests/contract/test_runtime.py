"""What every `Runtime` operation means (`ingot.runtimes.base`), checked on each implementation for real:
the process runtime, Podman and Docker Engine. The instance is tests/contract/runtime_app/app.py, as a
process from its file and in a container from its image (USER 10001).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from typing import Any

import pytest
from docker.errors import APIError, NotFound  # type: ignore[import-untyped]

from ingot.errors import OperationFailed
from ingot.runtimes.base import LOG_BACKUPS, Hardening, Resources, VolumeMount
from ingot.runtimes.docker import DockerRuntime
from tests.contract.runtime_kits import Kit, answering, answers, get_json, intent_of, wait_for
from tests.support.engines import BASE_IMAGE, client_at


def dead(kit: Kit, row: object) -> object:
    seen = kit.runtime.observe(row)  # type: ignore[arg-type]
    return None if seen.alive else seen


def logged(kit: Kit, row: object, text: str) -> None:
    """The log shows `text` (soon: the process runtime's logger writes it a moment later)."""
    wait_for(lambda: any(text in line for line in kit.runtime.log_tail(row, 10)),  # type: ignore[arg-type]
             f"{text!r} in the log", timeout=10)


# ---- start ----------------------------------------------------------------------------------------


def test_start_returns_a_row_and_the_instance_answers_there(kit: Kit) -> None:
    request = kit.request()
    row = kit.start(request)

    assert (row.id, row.runtime, row.release_id, row.environment, row.service, row.state) == (
        request.instance_id, kit.runtime.name, request.release_id, "staging", "web", "starting")
    assert row.host == "127.0.0.1" and row.port > 0
    assert row.pid or row.handle
    answering(row)
    assert kit.runtime.observe(row).alive

    other = kit.start(kit.request())
    answering(other)
    assert other.port != row.port  # each instance its own port
    assert get_json(other, "/env")["INGOT_INSTANCE"] == other.id


def test_env_reaches_the_instance_and_ingot_variables_win(kit: Kit) -> None:
    request = kit.request(env={"GREETING": "hej", "API_KEY": "s3cret", "INGOT_RELEASE": "forged", "PORT": "1"})
    row = kit.start(request)
    answering(row)
    env = get_json(row, "/env")

    assert env["GREETING"] == "hej" and env["API_KEY"] == "s3cret"
    assert env["INGOT_RELEASE"] == request.release_id
    assert (env["INGOT_INSTANCE"], env["INGOT_SERVICE"], env["INGOT_ENVIRONMENT"], env["INGOT_PROJECT"]) == (
        request.instance_id, "web", "staging", kit.project)
    # PORT is where to listen: the host port for a process, the container port in a container.
    assert env["PORT"] == str(row.port if kit.kind == "process" else request.container_port)
    # Nothing of the test runner's own environment leaks in.
    assert "PYTEST_CURRENT_TEST" in os.environ and "PYTEST_CURRENT_TEST" not in env


def test_logs_hold_stdout_and_stderr(kit: Kit) -> None:
    row = kit.start(kit.request())
    answering(row)
    lines = wait_for(lambda: (lambda t: t if len([x for x in t if "says hello" in x]) == 2 else None)(
        kit.runtime.log_tail(row, 20)), "both hello lines in the log")
    assert any(f"contract app {row.id} says hello on stdout" in line for line in lines)
    assert any(f"contract app {row.id} says hello on stderr" in line for line in lines)
    assert kit.runtime.log_tail(row, 1) == lines[-1:]


def test_a_missing_artifact_or_image_is_a_clear_error_at_once(kit: Kit) -> None:
    if kit.kind == "process":
        request = kit.request(artifact_path=kit.workdir / "no-such-artifact")
    else:
        request = kit.request(image="sha256:" + "0" * 64)
    began = time.monotonic()
    with pytest.raises(OperationFailed) as failure:
        kit.start(request)
    assert time.monotonic() - began < 10
    assert request.instance_id in failure.value.message
    assert kit.running_labelled() == []  # nothing left behind


def test_an_instance_that_dies_at_once_is_reported_with_its_exit_code_and_log(kit: Kit) -> None:
    request = kit.request(env={"CONTRACT_EXIT_AT_ONCE": "4"})
    try:
        row = kit.start(request)
    except OperationFailed as failure:  # containers: told by start (the engine unpublished its port)
        assert "code 4" in failure.value.message
        assert any("dying at once" in line for line in failure.value.details), failure.value.details
        assert kit.running_labelled() == []
        return
    seen = wait_for(lambda: dead(kit, row), "the instance to be seen dead")
    assert seen.exit_code == 4, seen  # type: ignore[attr-defined]
    logged(kit, row, "dying at once")


# ---- observe --------------------------------------------------------------------------------------


def test_an_instance_that_exits_is_reported_dead_with_its_exit_code_every_time(kit: Kit) -> None:
    row = kit.start(kit.request())
    answering(row)
    assert get_json(row, "/exit?code=3") == {"exiting": 3}

    seen = wait_for(lambda: dead(kit, row), "the instance to be seen dead")
    assert (seen.exit_code, seen.detail) == (3, "exited with code 3")  # type: ignore[attr-defined]
    again = kit.runtime.observe(row)
    assert (again.alive, again.exit_code) == (False, 3)  # stable, not only the first time
    logged(kit, row, "exiting with 3 as asked")


def test_a_stopped_instance_is_alive_and_stop_still_lets_it_end_gracefully(kit: Kit) -> None:
    row = kit.start(kit.request())
    answering(row)
    assert row.pid
    os.kill(row.pid, signal.SIGSTOP)  # hung: not dead; health probes are what judge it
    assert kit.runtime.observe(row).alive
    assert not answers(row)

    began = time.monotonic()
    kit.runtime.stop(row, 20.0)
    assert time.monotonic() - began < 10  # SIGTERM acted on (SIGCONT sent): no wait for the SIGKILL
    assert not kit.runtime.observe(row).alive


# ---- stop -----------------------------------------------------------------------------------------


def test_stop_is_graceful_and_stopping_twice_or_what_is_gone_is_fine(kit: Kit) -> None:
    row = kit.start(kit.request())
    answering(row)

    began = time.monotonic()
    kit.runtime.stop(row, 20.0)
    assert time.monotonic() - began < 10  # the app ends on SIGTERM: no wait for the SIGKILL deadline
    assert not kit.runtime.observe(row).alive
    assert not answers(row)
    kit.runtime.stop(row, 1.0)  # twice
    kit.runtime.stop(intent_of(row), 1.0)  # never known to have started: no pid, no handle
    wait_for(lambda: kit.running_labelled() == [], "nothing of the instance left")
    kit.runtime.stop(row, 1.0)  # gone altogether (containers: removed)
    assert not kit.runtime.observe(row).alive


def test_stop_kills_an_instance_that_ignores_sigterm_within_the_grace(kit: Kit) -> None:
    row = kit.start(kit.request(env={"CONTRACT_ON_TERM": "ignore"}))
    answering(row)

    began = time.monotonic()
    kit.runtime.stop(row, 1.5)
    took = time.monotonic() - began
    assert 1.4 < took < 8, took
    assert not kit.runtime.observe(row).alive
    assert not answers(row)


def test_stop_of_an_instance_that_already_exited(kit: Kit) -> None:
    row = kit.start(kit.request())
    answering(row)
    get_json(row, "/exit?code=0")
    wait_for(lambda: dead(kit, row), "the instance to be seen dead")
    began = time.monotonic()
    kit.runtime.stop(row, 20.0)
    assert time.monotonic() - began < 5
    wait_for(lambda: kit.running_labelled() == [], "nothing of the instance left")


# ---- another runtime object: the agent restarted --------------------------------------------------


def test_a_new_runtime_object_observes_finds_reads_and_stops_what_an_earlier_one_started(kit: Kit) -> None:
    row = kit.start(kit.request())
    answering(row)
    later = kit.fresh()

    assert later.observe(row).alive
    found = later.find(intent_of(row), kit.state_dir)
    assert found is not None
    assert (found.id, found.port, found.pid, found.handle, found.state) == (row.id, row.port, row.pid, row.handle,
                                                                             "starting")
    assert later.find(replace(intent_of(row), id="web-nosuch"), kit.state_dir) is None
    assert later.find(intent_of(row), kit.state_dir + "-another-ingot") is None
    assert any("says hello on stdout" in line for line in later.log_tail(found, 20))

    later.stop(found, 20.0)
    assert not later.observe(found).alive
    assert not kit.runtime.observe(row).alive  # the first object agrees
    assert not answers(row)


def test_a_recycled_pid_is_not_the_instance(kit: Kit) -> None:
    if kit.kind != "process":
        pytest.skip("containers are known by their container ID, which an engine never reuses")
    row = kit.start(kit.request())
    answering(row)
    forged = replace(row, proc_start="1")  # the same pid, started at another time: another process
    assert not kit.fresh().observe(forged).alive
    kit.fresh().stop(forged, 0.1)
    assert kit.runtime.observe(row).alive  # the real instance was left alone


# ---- volumes ---------------------------------------------------------------------------------------


def test_a_volume_is_writable_by_the_instance_and_kept_for_the_instance_that_replaces_it(kit: Kit) -> None:
    """Written by the instance's own (non-root) user, also on a fresh engine volume, which Docker Engine gives
    the image's ownership of the path (root's, here), and what was written is there for its replacement,
    started by a new runtime object (a restarted agent)."""
    if kit.kind == "process":
        assert kit.artifact is not None
        source = str(kit.artifact.parent / "data")
    else:
        source = f"ingot-{kit.project}-staging-data"
    mount = VolumeMount("data", "/data", source)
    try:
        first = kit.start(kit.request(volumes=(mount,)))
        answering(first)
        assert get_json(first, "/note?text=one")["notes"] == ["one"]
        kit.runtime.stop(first, 5.0)
        later = kit.fresh()
        second = later.start(kit.request(volumes=(mount,)))
        kit.started.append(second)
        answering(second)
        assert get_json(second, "/note?text=two")["notes"] == ["one", "two"]
        assert get_json(second, "/whoami")["uid"] != 0
    finally:
        if kit.kind != "process":
            client = client_at(str(kit.engine_url))
            kit.clean_up()
            wait_for(lambda: _removed_volume(client, source), what=f"volume {source} removed")


def _removed_volume(client: Any, name: str) -> bool:
    try:
        client.volumes.get(name).remove(force=True)
    except NotFound:
        return True
    except APIError:  # still in use by a container being removed
        return False
    return True


# ---- containers: user and resources ---------------------------------------------------------------


def test_the_image_user_runs_it_and_run_as_user_overrides_it(engine_kit: Kit) -> None:
    row = engine_kit.start(engine_kit.request())
    answering(row)
    assert get_json(row, "/whoami")["uid"] == 10001  # the image's USER

    row = engine_kit.start(engine_kit.request(hardening=Hardening(run_as_user=12345)))
    answering(row)
    assert get_json(row, "/whoami")["uid"] == 12345
    attrs = client_at(str(engine_kit.engine_url)).containers.get(row.handle).attrs
    assert attrs["Config"]["User"] == "12345"


def test_a_root_image_is_refused_under_run_as_non_root(engine_kit: Kit) -> None:
    client = client_at(str(engine_kit.engine_url))
    root_image = str(client.images.get(BASE_IMAGE).id)  # sets no USER: root
    request = engine_kit.request(image=root_image, command=("sleep", "60"))
    with pytest.raises(OperationFailed) as failure:
        engine_kit.start(request)
    assert "runs as root" in failure.value.message and "run_as_non_root" in failure.value.message
    assert request.instance_id in failure.value.message
    assert any("run_as_user" in line for line in failure.value.details)
    assert engine_kit.running_labelled() == []

    # A uid given, it runs as that uid; run_as_non_root relaxed, as the image's root.
    for hardening, uid in ((Hardening(run_as_user=10002), "10002"), (Hardening(run_as_non_root=False), "0")):
        row = engine_kit.start(replace(request, instance_id=request.instance_id + "x" + uid, hardening=hardening,
                                       command=("sh", "-c", "id -u; sleep 60")))
        assert wait_for(lambda r=row: [ln for ln in engine_kit.runtime.log_tail(r, 5) if ln.strip().isdigit()],
                        "the uid in the log") == [uid]


def test_resources_become_engine_limits(engine_kit: Kit) -> None:
    resources = Resources.from_spec({"limits": {"memory": "96Mi", "cpu": "500m"},
                                     "requests": {"memory": "32Mi", "cpu": "250m"}})
    assert resources == Resources(memory_bytes=96 * 2**20, nano_cpus=500_000_000, cpu_shares=256,
                                  memory_reservation_bytes=32 * 2**20)
    row = engine_kit.start(engine_kit.request(resources=resources))
    answering(row)
    host_config = client_at(str(engine_kit.engine_url)).containers.get(row.handle).attrs["HostConfig"]
    assert (host_config["Memory"], host_config["NanoCpus"], host_config["CpuShares"],
            host_config["MemoryReservation"]) == (96 * 2**20, 500_000_000, 256, 32 * 2**20)

    # Enforced, not only recorded: the kernel kills what goes over the memory limit.
    hog = engine_kit.start(engine_kit.request(
        resources=Resources(memory_bytes=48 * 2**20),
        command=("python3", "-c", "import time; print('up', flush=True); time.sleep(0.5); b = bytearray(200 * 2**20); "
                                  "time.sleep(60)")))
    seen = wait_for(lambda: dead(engine_kit, hog), "the memory hog to be killed")
    # SIGKILLed (Docker Engine also says "killed for running out of memory"; Podman 4.3 does not report it).
    assert seen.exit_code == 137, seen  # type: ignore[attr-defined]


def test_unlimited_by_default(engine_kit: Kit) -> None:
    row = engine_kit.start(engine_kit.request())
    host_config = client_at(str(engine_kit.engine_url)).containers.get(row.handle).attrs["HostConfig"]
    assert (host_config["Memory"], host_config["NanoCpus"]) == (0, 0)
    assert isinstance(engine_kit.runtime, DockerRuntime)


def test_an_instance_that_writes_without_end_stays_within_its_log_cap(kit: Kit,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cap = 64 * 1024
    monkeypatch.setenv("INGOT_LOG_MAX_BYTES", str(cap))
    row = kit.start(kit.request())
    wait_for(lambda: answers(row), "the instance to answer")
    assert get_json(row, "/spew?lines=20000", timeout=30)["spewed"] == 20000  # about 1.8 MB
    logged(kit, row, "spews line 00019999")  # the newest lines are kept
    files = kit.log_files(row)
    assert files, "the instance's log on disk"
    total = sum(path.stat().st_size for path in files)
    # One file per rotation at most (the engines write a record a little past the cap before rotating).
    assert total <= (LOG_BACKUPS + 1) * (cap + 8 * 1024), (total, files)
