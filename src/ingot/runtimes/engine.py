"""Finding the container engine: Docker Engine or Podman, through the Docker-compatible API.

`connect_engine()` returns one pinged `docker.DockerClient` per process. `DOCKER_HOST`, when set, is
the only place looked at: an explicit choice must not silently fall back to another engine, whose
images and containers would be different ones. Otherwise the usual sockets are tried in order.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import DockerException

from ingot.errors import OperationFailed

# Where the engine is looked for when DOCKER_HOST is unset, in this order. The last one is where
# scripts/provision-containers starts Podman's API on our test machines.
ROOTFUL_DOCKER = "/var/run/docker.sock"
ROOTFUL_PODMAN = "/run/podman/podman.sock"
PROVISIONED_PODMAN = "/var/lib/ingot-test/podman.sock"

# A ping must be quick: a socket nobody serves should not hold a command up.
PING_TIMEOUT = 5.0
# Requests after the ping: long enough for a slow image build step or a large image removal.
REQUEST_TIMEOUT = 300.0


class ContainerEngineUnavailable(OperationFailed):
    """No Docker-compatible container engine answered."""


@dataclass
class _Cached:
    pid: int
    docker_host: str | None
    client: docker.DockerClient


API_VERSION = "1.41"
_cache: _Cached | None = None
_podman_by_url: dict[str, bool] = {}
_lock = threading.Lock()


def candidate_urls() -> list[str]:
    """The engine addresses tried, in order: DOCKER_HOST alone if set, else the usual sockets."""
    docker_host = os.environ.get("DOCKER_HOST")
    if docker_host:
        return [docker_host]
    sockets = [ROOTFUL_DOCKER, ROOTFUL_PODMAN]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        sockets.append(f"{runtime_dir}/podman/podman.sock")
    sockets.append(PROVISIONED_PODMAN)
    return [f"unix://{path}" for path in sockets]


def connect_engine() -> docker.DockerClient:
    """The container engine's client, connected and pinged once per process.

    The cache is keyed by pid (a forked child must not share the parent's connection pool) and by
    DOCKER_HOST (so pointing it elsewhere takes effect without a restart).
    """
    global _cache
    docker_host = os.environ.get("DOCKER_HOST")
    with _lock:
        if _cache is not None and _cache.pid == os.getpid() and _cache.docker_host == docker_host:
            return _cache.client
        client = find_engine()
        _cache = _Cached(pid=os.getpid(), docker_host=docker_host, client=client)
        return client


def is_podman(client: docker.DockerClient) -> bool:
    """True when the engine behind `client` is Podman (asked once per engine address).

    Only for working around a known difference; everything else is the same API on both.
    """
    # Every unix socket's base URL is http+docker://localhost: its path tells Podman's from Docker's.
    url = str(getattr(getattr(client.api, "_custom_adapter", None), "socket_path", None) or client.api.base_url)
    with _lock:
        known = _podman_by_url.get(url)
    if known is None:
        components = client.version().get("Components") or []
        known = any("podman" in str(part.get("Name", "")).lower() for part in components)
        with _lock:
            _podman_by_url[url] = known
    return known


def forget_engine() -> None:
    """Drop the cached client, so the next `connect_engine()` looks again (after starting an engine)."""
    global _cache
    with _lock:
        if _cache is not None:
            _cache.client.close()
        _cache = None
        _podman_by_url.clear()


def find_engine() -> docker.DockerClient:
    """Look for the engine now, without the cache: the first candidate that answers a ping."""
    tried: list[str] = []
    for url in candidate_urls():
        client, outcome = _try_connect(url)
        if client is not None:
            return client
        tried.append(f"  {url}: {outcome}")
    raise ContainerEngineUnavailable(
        "no container engine was found: the container runtime needs Docker Engine or Podman",
        details=[
            "looked for (DOCKER_HOST, if set, is the only place looked at):",
            *tried,
            "start one, then try again:",
            "  Podman:        podman system service --time=0 unix:///run/podman/podman.sock &",
            "  Docker Engine: dockerd &   (listens on /var/run/docker.sock)",
            "  on a test machine: eval \"$(bash scripts/provision-containers)\"",
            "or point DOCKER_HOST at the engine's socket, e.g. DOCKER_HOST=unix:///path/to/engine.sock",
        ],
    )


def _try_connect(url: str) -> tuple[docker.DockerClient | None, str]:
    """A pinged client for `url`, or None and why not, in words."""
    if url.startswith("unix://") and not Path(url.removeprefix("unix://")).exists():
        return None, "no socket there"
    try:
        # The SDK's default API version (1.44) is newer than Debian's Docker Engine and Podman 4 accept,
        # and version="auto" costs a /version call that Podman answers in about 0.3 s, on every CLI
        # command. 1.41 is what Podman 4 speaks and every Docker Engine since 20.10 accepts.
        client = docker.DockerClient(base_url=url, version=API_VERSION, timeout=PING_TIMEOUT)
        client.ping()
    except (DockerException, OSError) as exc:
        return None, f"did not answer ({_short(exc)})"
    client.api.timeout = REQUEST_TIMEOUT
    return client, "answered"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
