"""Finding the engine: DOCKER_HOST alone when set, else the usual sockets; a clear error when none answers."""

from __future__ import annotations

from pathlib import Path

import docker  # type: ignore[import-untyped]
import pytest

from ingot.errors import OperationFailed
from ingot.runtimes import engine as engine_module
from ingot.runtimes.engine import ContainerEngineUnavailable, connect_engine, find_engine


def test_the_client_is_cached_per_process(engine: docker.DockerClient) -> None:
    assert connect_engine() is connect_engine()
    assert connect_engine().ping()


def test_an_unanswering_docker_host_is_not_silently_replaced(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(ContainerEngineUnavailable) as failure:
        connect_engine()
    assert isinstance(failure.value, OperationFailed)
    assert "no container engine was found" in failure.value.message
    assert any(f"{tmp_path}/nothing.sock: no socket there" in line for line in failure.value.details)
    assert not any("/var/run/docker.sock" in line and "no socket" in line for line in failure.value.details)


def test_without_docker_host_every_usual_socket_is_listed_with_how_to_start_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    for constant in ("ROOTFUL_DOCKER", "ROOTFUL_PODMAN", "PROVISIONED_PODMAN"):
        monkeypatch.setattr(engine_module, constant, str(tmp_path / f"{constant.lower()}.sock"))
    # A socket file nobody serves: looked at, and said not to answer.
    (tmp_path / "rootful_podman.sock").touch()

    with pytest.raises(ContainerEngineUnavailable) as failure:
        find_engine()  # connect_engine() would answer from its cache: DOCKER_HOST is unset either way
    details = "\n".join(failure.value.details)
    assert f"unix://{tmp_path}/rootful_docker.sock: no socket there" in details
    assert f"unix://{tmp_path}/rootful_podman.sock: did not answer" in details
    assert f"unix://{tmp_path}/xdg/podman/podman.sock: no socket there" in details
    assert f"unix://{tmp_path}/provisioned_podman.sock: no socket there" in details
    assert "podman system service" in details and "dockerd" in details
