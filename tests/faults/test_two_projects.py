"""Two projects in one directory: each has its own state and agent; deploying or taking down one never
touches the other. And a state of the older shared layout moves into its project's own directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ExampleProject, free_port, load, make_example, stop_everything


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[ExampleProject, ExampleProject]]:
    """The example (`ingot.yaml`, project hello) and a second spec beside it (`other.yaml`, project
    hello-two) with the same service and environment names, on ports of its own."""
    first = make_example(tmp_path)
    spec = (first.root / "ingot.yaml").read_text().replace("project: hello", "project: hello-two")
    port = free_port()
    spec = spec.replace(f'listen: "127.0.0.1:{first.port}"', f'listen: "127.0.0.1:{port}"')
    (first.root / "other.yaml").write_text(spec)
    second = ExampleProject(first.root, port, env={"INGOT_FILE": "other.yaml"}, _project="hello-two")
    yield first, second
    stop_everything(second)
    stop_everything(first)


def agent_pid(example: ExampleProject) -> int:
    return int(example.ingot("status", "--json", check=True).json["agent"]["pid"])


def test_two_projects_in_one_directory_never_touch_each_other(two: tuple[ExampleProject, ExampleProject],
                                                              tmp_path: Path) -> None:
    first, second = two
    first.ingot("deploy", check=True)
    with load(first.url, tmp_path) as first_load:
        second.ingot("deploy", check=True)
        assert first.get()["version"] == "1" and second.get()["version"] == "1"
        with load(second.url, tmp_path) as second_load:
            second.set_version("2")  # both specs build the same directory: only hello-two deploys it
            second.ingot("deploy", check=True)
        assert first.get()["version"] == "1" and second.get()["version"] == "2"
        assert agent_pid(first) != agent_pid(second)
        assert first.state != second.state and (first.state / "state.db").exists()
        assert (second.state / "state.db").exists() and not (first.root / ".ingot" / "state.db").exists()
        first_status = first.ingot("status", "--json", check=True).json
        assert first_status["project"] == "hello" and len(first_status["services"][0]["instances"]) == 2
        # Taking hello-two down stops its agent and instances, and nothing of hello.
        second.ingot("down", check=True)
        assert second.ingot("status", "--json", check=True).json["agent"]["running"] is False
        after = first.ingot("status", "--json", check=True).json
        assert after["agent"]["running"] and after["services"][0]["instances"] == first_status["services"][0][
            "instances"]
        assert first.get()["version"] == "1"
    assert first_load["failures"] == [], first_load["failures"][:5]
    assert second_load["failures"] == [], second_load["failures"][:5]
    assert first_load["requests"] > 0 and set(first_load["versions"]) == {"1"}
    assert set(second_load["versions"]) == {"1", "2"}
    assert [h["release"] for h in first.ingot("history", "--json", check=True).json] == [
        first_status["services"][0]["release"]]


def test_a_legacy_shared_state_is_used_in_place_while_it_runs_and_moved_once_idle(
        two: tuple[ExampleProject, ExampleProject], tmp_path: Path) -> None:
    first, second = two
    legacy = first.root / ".ingot"
    # The older layout: the state in .ingot/ itself, as earlier versions made it.
    first.ingot("--state", str(legacy), "deploy", check=True)
    released = first.ingot("--state", str(legacy), "history", "--json", check=True).json[0]["release"]
    with load(first.url, tmp_path) as during:
        in_place = first.ingot("status", "--json", check=True).json
        assert in_place["state"] == str(legacy) and in_place["services"][0]["release"] == released
        second.ingot("deploy", check=True)  # another project: a directory of its own, hello keeps serving
        assert second.get()["version"] == "1" and first.get()["version"] == "1"
        assert (legacy / "hello-two" / "state.db").exists() and (legacy / "state.db").exists()
    assert during["failures"] == [], during["failures"][:5]
    first.ingot("down", check=True)  # now nothing of hello runs: the next command moves its state
    moved = first.ingot("history", "--json", check=True).json
    assert [h["release"] for h in moved] == [released]
    assert (first.state / "state.db").exists() and not (legacy / "state.db").exists()
    assert (first.state / "keys").is_dir() and not (legacy / "keys").exists()
    assert "ledger intact" in first.ingot("audit", "verify", check=True).out  # keys and artifacts came along
    log = first.ingot("audit", "log", "--json", "--limit", "1000", check=True).json
    [move] = [e for e in log if e["action"] == "state.move"]
    assert move["payload"]["from"] == str(legacy) and move["payload"]["to"] == str(first.state)
    first.ingot("deploy", check=True)  # the stored artifact and the release come from the moved state
    assert first.get()["version"] == "1"
    assert first.ingot("history", "--json", check=True).json[0]["release"] == released
    assert second.get()["version"] == "1"  # hello-two served throughout
