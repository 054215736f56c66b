"""Operating commands: logs, rollback --to any earlier release, environments, the state directory."""

from __future__ import annotations

from pathlib import Path

from tests.support.harness import ExampleProject


def test_rollback_to_an_earlier_release_by_prefix(example: ExampleProject) -> None:
    releases = []
    for version in ("1", "2", "3"):
        example.set_version(version)
        example.ingot("deploy", check=True)
        releases.append(example.get()["release"])
    first = releases[0]
    result = example.ingot("rollback", "--to", first[:6], check=True)
    assert f"rolled back to release {first}" in result.out
    assert example.get()["version"] == "1"
    # The default rollback now goes back to what was live before this rollback: version 3.
    example.ingot("rollback", check=True)
    assert example.get()["version"] == "3"
    bad = example.ingot("rollback", "--to", "zzzz")
    assert bad.code == 2 and "no release of web starts with 'zzzz'" in bad.err


def test_logs_show_each_running_instance(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    for _ in range(3):
        example.get()
    result = example.ingot("logs", "web", "-n", "20", check=True)
    instances = example.ingot("status", "--json", check=True).json["services"][0]["instances"]
    for instance in instances:
        assert f"==> {instance['id']} <==" in result.out
    assert "hello v1 listening" in result.out
    assert '"GET / HTTP/1.1" 200' in result.out


def test_production_overrides_and_separate_router(example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    prod = example.ingot("deploy", "--env", "production", check=True)
    status = example.ingot("status", "--json", check=True).json
    by_env = {s["environment"]: s for s in status["services"]}
    assert len(by_env["production"]["instances"]) == 3 and len(by_env["staging"]["instances"]) == 2
    assert by_env["production"]["url"] != by_env["staging"]["url"]
    assert by_env["production"]["url"] in prod.out
    # Taking production down leaves staging serving.
    example.ingot("down", "--env", "production", check=True)
    assert example.get()["version"] == "1"
    status = example.ingot("status", "--json", check=True).json
    assert [s["environment"] for s in status["services"]] == ["staging"]


def test_state_directory_from_ingot_home_and_flag(example: ExampleProject, tmp_path: Path) -> None:
    home = tmp_path / "elsewhere"
    result = example.ingot("deploy", check=True, extra_env={"INGOT_HOME": str(home)})
    assert "live at" in result.out
    assert (home / "state.db").exists() and not (example.root / ".ingot" / "state.db").exists()
    # --state names the same directory explicitly and sees the same deployment.
    status = example.ingot("--state", str(home), "status", "--json", check=True).json
    assert status["services"][0]["release"] == example.get()["release"]
    example.ingot("--state", str(home), "down", check=True)
    assert example.ingot("--state", str(home), "status", "--json", check=True).json["services"] == []
