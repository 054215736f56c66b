"""`ingot run` on a container runtime, as a user at a terminal runs it: a TTY of the command's own joined to
the caller's (raw keys, window size, Ctrl-C, exit code), on a real pseudo-terminal; and a detached one,
listed by `ingot status` and stopped (and recorded) by `ingot down`. On Podman and on Docker Engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker  # type: ignore[import-untyped]
import pytest

from tests.integration.test_release_command import entries
from tests.support.engines import DOCKER_HOST_VAR, remove_project_containers
from tests.support.harness import ExampleProject, make_container_example, stop_everything
from tests.support.pty_session import ingot_on_pty

# Says where it runs and how big its window is, reads a line, says the size again on each line typed
# (until told `done`), then waits for Ctrl-C and exits 6 after it.
PROGRAM = """\
import os, sys, time
def size():
    columns, rows = os.get_terminal_size(0)
    return f"{rows}x{columns}"
print("tty", os.ttyname(0), os.isatty(1), flush=True)
print("upper", input("name? ").upper(), flush=True)
while (line := input()) != "done":
    print("size", size(), flush=True)
try:
    print("waiting for ctrl-c", flush=True)
    time.sleep(120)
except KeyboardInterrupt:
    print("interrupted", flush=True)
sys.exit(6)
"""


@pytest.fixture
def engine(each_engine: docker.DockerClient) -> docker.DockerClient:
    return each_engine  # on Podman and on Docker Engine (conftest's engine_kind)


@pytest.fixture
def boxed(engine: docker.DockerClient, engine_kind: str, tmp_path: Path) -> Iterator[ExampleProject]:
    example = make_container_example(tmp_path, replicas=1)
    if engine_kind == "docker":
        example.env["DOCKER_HOST"] = os.environ[DOCKER_HOST_VAR]
    yield example
    stop_everything(example)
    remove_project_containers(engine, example.project)


def test_ingot_run_on_a_terminal_gets_a_tty_and_a_detached_one_is_listed_and_stopped_by_down(
        engine: docker.DockerClient, boxed: ExampleProject) -> None:
    boxed.ingot("deploy", check=True)
    session = ingot_on_pty(boxed, "run", "web", "--", "python3", "-c", PROGRAM, rows=31, columns=97)
    cooked = session.modes()
    try:
        shown = session.read_until("name? ")
        assert "tty /dev/pts/" in shown and "True" in shown, shown
        session.type("ada\r")  # raw: the Enter key is a carriage return, which the command's TTY turns into \n
        session.read_until("upper ADA")
        session.type("?\r")
        session.read_until("size 31x97")
        session.resize(40, 120)  # the window changes while it runs: SIGWINCH, passed on to its TTY
        assert session.until(lambda: session.type("?\r"), "size 40x120"), session.text
        session.type("done\r")
        session.read_until("waiting for ctrl-c")
        session.type("\x03")  # Ctrl-C, a key like any other: the command's TTY makes it its SIGINT
        session.read_until("interrupted")
        assert session.wait() == 6, session.text
        assert "Traceback" not in session.text, session.text
        # The caller's terminal is left as it was: cooked again, with echo and line editing.
        assert session.modes() == cooked
    finally:
        session.close()

    # Detached: it runs on after `ingot run` returns, `ingot status` lists it, `ingot down` stops it.
    started = boxed.ingot("run", "web", "--detach", "--json", "--", "python3", "-c",
                          "import time; print('detached', flush=True); time.sleep(300)", check=True).json
    one = started["instance"]

    def running() -> list[object]:
        return list(engine.containers.list(filters={"label": f"ingot.instance={one}"}))

    assert running()
    status = boxed.ingot("status", "--json", check=True).json
    assert [(o["id"], o["service"], o["runtime"]) for o in status["one_offs"]] == [(one, "web", "docker")]
    assert f"one-off {one} running" in boxed.ingot("status", check=True).out
    down = boxed.ingot("down", check=True)
    assert not engine.containers.list(all=True, filters={"label": f"ingot.instance={one}"}), down.out
    finished = [e for e in entries(boxed, "run.finish") if e["payload"]["instance"] == one]
    assert [e["payload"]["stopped_by"] for e in finished] == ["down"], finished
    assert boxed.ingot("status", "--json", check=True).json["one_offs"] == []
