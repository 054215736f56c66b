"""Fixtures for tests against a real container engine (Podman in CI, Docker Engine works too).

The engine comes from `scripts/provision-containers` when none answers with the base image: it is
idempotent, so this costs about 0.1 s when the machine is already provisioned. Without an engine the
tests are skipped with the reason, except in CI (`CI` set), where that is a failure.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker  # type: ignore[import-untyped]
import pytest

from ingot.runtimes.docker import DockerRuntime
from tests.containers.helpers import BASE_IMAGE, BuiltImage
from tests.support.engines import docker_engine, podman_engine, remove_project_containers

APP_DIR = Path(__file__).with_name("app")
APP_TAG = "localhost/ingot-test-app:latest"


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    return podman_engine()


@pytest.fixture(params=["podman", "docker"])
def engine_kind(request: pytest.FixtureRequest) -> str:
    """For tests that run on each engine: "podman" or "docker"."""
    return str(request.param)


@pytest.fixture
def each_engine(engine_kind: str) -> docker.DockerClient:
    """The engine `engine_kind` names, provisioned if needed."""
    return podman_engine() if engine_kind == "podman" else docker_engine()


@pytest.fixture(scope="session")
def runtime(engine: docker.DockerClient) -> DockerRuntime:
    return DockerRuntime()


@pytest.fixture(scope="session")
def app_image(runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The test app's image, built once per session (and from the engine's cache after the first run)."""
    context = tmp_path_factory.mktemp("app-context")
    for source in APP_DIR.iterdir():
        shutil.copy2(source, context / source.name)
    output: list[str] = []
    image_id = runtime.build_image(context, tag=APP_TAG, build_args={"BASE": BASE_IMAGE}, on_output=output.append)
    return BuiltImage(image_id=image_id, tag=APP_TAG, context=context, output=output)


@pytest.fixture
def project(engine: docker.DockerClient) -> Iterator[str]:
    """A project name of this test's own; every container labelled with it is removed afterwards."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    remove_project_containers(engine, name)
