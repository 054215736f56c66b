"""Fixtures for tests against a real container engine (Podman in CI, Docker Engine works too).

The engine comes from `scripts/provision-containers` when none answers with the base image: it is
idempotent, so this costs about 0.1 s when the machine is already provisioned. Without an engine the
tests are skipped with the reason, except in CI (`CI` set), where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import docker  # type: ignore[import-untyped]
import pytest
from docker.errors import DockerException, NotFound  # type: ignore[import-untyped]

from ingot.errors import OperationFailed
from ingot.runtimes.docker import DockerRuntime
from ingot.runtimes.engine import connect_engine, forget_engine
from tests.containers.helpers import BASE_IMAGE, BuiltImage

REPO = Path(__file__).resolve().parents[2]
PROVISION = REPO / "scripts" / "provision-containers"
APP_DIR = Path(__file__).with_name("app")
APP_TAG = "localhost/ingot-test-app:latest"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI is set and the container tests have no container engine: {reason}", pytrace=False)
    pytest.skip(f"no container engine with {BASE_IMAGE} (run: eval \"$(bash scripts/provision-containers)\"): "
                f"{reason}")


def engine_problem() -> str | None:
    """Why the engine cannot run these tests, or None when it can."""
    try:
        client = connect_engine()
    except OperationFailed as exc:
        return str(exc)
    try:
        client.images.get(BASE_IMAGE)
    except NotFound:
        return f"the engine at {client.api.base_url} has no image {BASE_IMAGE}"
    except DockerException as exc:
        return f"the engine at {client.api.base_url} failed: {exc}"
    return None


def provision() -> None:
    """Run the idempotent provisioning script and take on the environment it prints."""
    try:
        done = subprocess.run(["bash", str(PROVISION)], capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"{PROVISION} could not run: {exc}")
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        unavailable(f"{PROVISION} failed with exit code {done.returncode}:\n{tail}")
    for line in done.stdout.splitlines():
        match = re.fullmatch(r"export (\w+)=(\S+)", line.strip())
        if match:
            os.environ[match[1]] = match[2]
    forget_engine()


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    if engine_problem() is not None:
        provision()
        problem = engine_problem()
        if problem is not None:
            unavailable(problem)
    return connect_engine()


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
    for container in engine.containers.list(all=True, filters={"label": f"ingot.project={name}"}):
        with contextlib.suppress(NotFound):  # removed meanwhile
            container.remove(force=True, v=True)
