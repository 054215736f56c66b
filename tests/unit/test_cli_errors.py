"""Bad input through the real CLI: a message naming file, line and key; exit code 2; no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def ingot(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingot", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


GOOD = """project: hello
services:
  web:
    command: [python, app.py]
    router: {listen: "127.0.0.1:18080"}
environments:
  staging: {}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("project: hello\nservices:\n  web:\n    command: [python, app.py]\n    port: 70000\n",
         "ingot.yaml:5: services.web.port:"),
        ("project: hello\nservices:\n  web:\n    comand: [python, app.py]\n",
         "ingot.yaml:4: services.web.comand: unknown key"),
        ("project: hello\nservices:\n  web:\n    port: 8000\n", "services.web"),
        ("project: hello\nservices:\n  web: {command: [x]\n", "ingot.yaml:4: invalid YAML"),
        ("project: hello\nservices:\n  web:\n    command: [x]\n    replicas: many\n",
         "ingot.yaml:5: services.web.replicas:"),
        ("project: hello\nservices:\n  web:\n    command: [x]\nenvironments:\n  prod:\n    services:\n"
         "      api: {replicas: 2}\n", "ingot.yaml:8: environments.prod.services.api"),
        ("project: hello\nservices:\n  web:\n    command: [x]\n  api:\n    command: [y]\n",
         "router.listen"),
    ],
)
def test_spec_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "ingot.yaml").write_text(text)
    for command in (["validate"], ["deploy"], ["plan"]):
        result = ingot(tmp_path, *command)
        assert result.returncode == 2, result
        assert expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / ".ingot").exists()  # nothing was started (or even made) for bad input


def test_missing_spec_file_is_bad_input(tmp_path: Path) -> None:
    result = ingot(tmp_path, "status")
    assert result.returncode == 2
    assert "ingot.yaml" in result.stderr and "-f" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_environment_and_service_are_bad_input(tmp_path: Path) -> None:
    (tmp_path / "ingot.yaml").write_text(GOOD)
    result = ingot(tmp_path, "plan", "--env", "prod")
    assert result.returncode == 2 and "unknown environment 'prod'" in result.stderr and "staging" in result.stderr
    result = ingot(tmp_path, "plan", "--service", "api")
    assert result.returncode == 2 and "unknown service 'api'" in result.stderr


def test_validate_and_schema_succeed(tmp_path: Path) -> None:
    (tmp_path / "ingot.yaml").write_text(GOOD)
    result = ingot(tmp_path, "validate", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"valid": True, "project": "hello", "services": ["web"],
                                         "environments": ["staging"]}
    schema = json.loads(ingot(tmp_path, "schema").stdout)
    assert schema["title"] == "ingot.yaml" and "services" in schema["properties"]


def test_rollback_with_nothing_deployed_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "ingot.yaml").write_text(GOOD)
    result = ingot(tmp_path, "rollback")
    assert result.returncode == 2
    assert "no earlier release" in result.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("    runtime: kubernetes\n    build: k8s\n", "runtime 'kubernetes' is not available yet"),
    ],
)
def test_features_of_later_versions_are_refused_before_anything_runs(tmp_path: Path, override: str,
                                                                    expected: str) -> None:
    spec = GOOD.replace('    router: {listen: "127.0.0.1:18080"}\n', "") .replace(
        "    command: [python, app.py]\n", "    command: [python, app.py]\n" + override)
    (tmp_path / "ingot.yaml").write_text(spec)
    assert ingot(tmp_path, "validate").returncode == 0  # valid spec, just not deployable yet
    result = ingot(tmp_path, "deploy")
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert not list((tmp_path / ".ingot").glob("*/agent.pid"))
