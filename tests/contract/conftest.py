"""The contract suite runs every test against each `Router` implementation.

`make_router()` builds an unstarted router of the parametrized kind on 127.0.0.1, any port
(`read_timeout`: how long it waits for a backend's answer, the same option on each). The
HAProxy cases need a haproxy binary (`tests/support/routers.haproxy_bin`: provisioned when missing;
skipped with the reason when none can be had, a failure in CI).

`kit` is one `Runtime` implementation per parameter (process, Podman, Docker Engine), `engine_kit`
the container engines only; engines are provisioned when missing (tests/support/engines.py), skipped with
the reason when none can be had, a failure in CI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingot.routers.base import Address, Router
from ingot.routers.builtin import BuiltinRouter
from tests.contract.runtime_kits import Kit, build_app_image, container_kit, process_kit
from tests.support.routers import haproxy_bin, kill_haproxy_of, run

__all__ = ["haproxy_bin", "make_router", "run"]

ROUTER_KINDS = ["builtin", "haproxy", "haproxy-front"]

MakeRouter = Callable[..., Router]


@pytest.fixture(params=ROUTER_KINDS)
def make_router(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeRouter]:
    haproxy: str | None = request.getfixturevalue("haproxy_bin") if request.param != "builtin" else None
    workdirs: list[Path] = []

    def make(listen: Address = ("127.0.0.1", 0), name: str = "contract", read_timeout: float = 60.0) -> Router:
        if haproxy is None:
            return BuiltinRouter(listen, name=name, read_timeout=read_timeout)
        from ingot.routers.haproxy import HAProxyRouter
        from ingot.routers.haproxy_config import Timeouts

        workdir = tmp_path / f"hap{len(workdirs)}"
        workdirs.append(workdir)
        if request.param == "haproxy-front":
            return FrontedRouter(listen, name, workdir, haproxy, Timeouts(server=read_timeout))
        return HAProxyRouter(
            listen, name=name, workdir=workdir, haproxy=haproxy, timeouts=Timeouts(server=read_timeout)
        )

    yield make
    for workdir in workdirs:
        kill_haproxy_of(workdir)  # only if a failed test left its haproxy running


class FrontedRouter:
    """A router of an `HAProxyFront` (the edge's shared listeners) routing every request for 127.0.0.1 on its
    HTTP listener: the same Router contract as a dedicated one. The front starts and stops with it."""

    def __init__(self, listen: Address, name: str, workdir: Path, haproxy: str, timeouts: Any) -> None:
        from ingot.edge.haproxy_front import HAProxyFront
        from ingot.routers.base import ClientPolicy

        self.front = HAProxyFront(workdir, http=listen, https=None, haproxy=haproxy, backends=1, slots=8,
                                  timeouts=timeouts)
        self.inner = self.front.router("contract", name, ClientPolicy())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def start(self) -> None:
        from ingot.edge.front import Binding, Route

        await self.front.start()
        try:
            await self.inner.start()
            await self.front.set_table([Binding(Route(host="127.0.0.1", tls="off"), "contract", "/p", "contract")])
        except BaseException:
            await self.front.stop()
            raise

    async def stop(self) -> None:
        await self.front.stop()


# ---- runtimes ----------------------------------------------------------------------------------------

RUNTIME_KINDS = ["process", "podman", "docker"]
CONTAINER_KINDS = ["podman", "docker"]


def _engine_url(kind: str) -> str:
    from tests.support.engines import DOCKER_HOST_VAR, docker_engine, podman_engine

    if kind == "podman":
        podman_engine()
        return os.environ["DOCKER_HOST"]
    docker_engine()
    return os.environ[DOCKER_HOST_VAR]


@pytest.fixture(scope="session")
def app_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Engine kind -> (engine URL, the contract app's image ID), filled on first use."""
    return {}


def _kit(kind: str, app_images: dict[str, tuple[str, str]], tmp_path: Path,
         factory: pytest.TempPathFactory) -> Kit:
    from tests.support.engines import client_at

    if kind == "process":
        return process_kit(tmp_path / "kit")
    if kind not in app_images:
        url = _engine_url(kind)
        app_images[kind] = (url, build_app_image(client_at(url), factory.mktemp(f"contract-app-{kind}")))
    url, image = app_images[kind]
    return container_kit(kind, url, image, tmp_path / "kit")


@pytest.fixture(params=RUNTIME_KINDS)
def kit(request: pytest.FixtureRequest, app_images: dict[str, tuple[str, str]], tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    made = _kit(request.param, app_images, tmp_path, tmp_path_factory)
    yield made
    made.clean_up()


@pytest.fixture(params=CONTAINER_KINDS)
def engine_kit(request: pytest.FixtureRequest, app_images: dict[str, tuple[str, str]], tmp_path: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    made = _kit(request.param, app_images, tmp_path, tmp_path_factory)
    yield made
    made.clean_up()
