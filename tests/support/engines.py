"""The container engines the tests run against: Podman (`scripts/provision-containers`, through DOCKER_HOST)
and Docker Engine (`scripts/provision-docker`, through INGOT_TEST_DOCKER_HOST, so that DOCKER_HOST stays
Podman's for everything else).

Each provisioning script is idempotent and costs about 0.1-0.5 s once the machine is provisioned, so an
engine that does not answer with the base image is provisioned on the spot. Without one the tests are
skipped with the reason, except in CI (`CI` set), where that is a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import NoReturn

import docker  # type: ignore[import-untyped]
import pytest
from docker.errors import APIError, DockerException, NotFound  # type: ignore[import-untyped]

from ingot.errors import OperationFailed
from ingot.runtimes.docker import containers_labelled
from ingot.runtimes.engine import API_VERSION, connect_engine, forget_engine

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/ingot-base:bookworm"
PROVISION_PODMAN = REPO / "scripts" / "provision-containers"
PROVISION_DOCKER = REPO / "scripts" / "provision-docker"
DOCKER_HOST_VAR = "INGOT_TEST_DOCKER_HOST"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str, script: Path = PROVISION_PODMAN) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI is set and the tests have no container engine: {reason}", pytrace=False)
    pytest.skip(f"no container engine with {BASE_IMAGE} (run as root: eval \"$(bash scripts/{script.name})\"): "
                f"{reason}")


def image_problem(client: docker.DockerClient) -> str | None:
    try:
        client.images.get(BASE_IMAGE)
    except NotFound:
        return f"the engine at {client.api.base_url} has no image {BASE_IMAGE}"
    except DockerException as exc:
        return f"the engine at {client.api.base_url} failed: {exc}"
    return None


def podman_problem() -> str | None:
    """Why the DOCKER_HOST engine (Podman) cannot run the tests, or None when it can."""
    try:
        client = connect_engine()
    except OperationFailed as exc:
        return str(exc)
    return image_problem(client)


def provision(script: Path) -> None:
    """Run an idempotent provisioning script and take on the environment it prints."""
    try:
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"{script} could not run: {exc}", script)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        unavailable(f"{script} failed with exit code {done.returncode}:\n{tail}", script)
    for line in done.stdout.splitlines():
        match = re.fullmatch(r"export (\w+)=(\S+)", line.strip())
        if match:
            os.environ[match[1]] = match[2]
    forget_engine()


def podman_engine() -> docker.DockerClient:
    """The Podman engine (DOCKER_HOST) with the base image, provisioned if needed."""
    if podman_problem() is not None:
        provision(PROVISION_PODMAN)
        problem = podman_problem()
        if problem is not None:
            unavailable(problem)
    return connect_engine()


def _docker_client() -> tuple[docker.DockerClient | None, str]:
    url = os.environ.get(DOCKER_HOST_VAR)
    if not url:
        return None, f"{DOCKER_HOST_VAR} is not set"
    try:
        client = docker.DockerClient(base_url=url, version=API_VERSION, timeout=300)
        client.ping()
    except (DockerException, OSError) as exc:
        return None, f"Docker Engine at {url} did not answer: {exc}"
    problem = image_problem(client)
    return (None, problem) if problem else (client, "")


def docker_engine() -> docker.DockerClient:
    """Docker Engine (INGOT_TEST_DOCKER_HOST) with the base image, provisioned if needed."""
    client, _ = _docker_client()
    if client is None:
        provision(PROVISION_DOCKER)
        client, problem = _docker_client()
        if client is None:
            unavailable(problem, PROVISION_DOCKER)
    return client


def client_at(url: str) -> docker.DockerClient:
    """A new client of the engine at `url`: what another process (a restarted agent) would hold."""
    return docker.DockerClient(base_url=url, version=API_VERSION, timeout=300)


def remove_project_containers(client: docker.DockerClient, project: str) -> None:
    """Remove every container labelled with `project`, whatever an engine is doing to it meanwhile."""
    for container in containers_labelled(client, f"ingot.project={project}"):
        try:
            container.remove(force=True, v=True)
        except NotFound:
            continue
        except APIError as exc:  # Podman: 500 "no such container"; both: 409 "removal already in progress"
            if exc.status_code not in (409, 500):
                raise
