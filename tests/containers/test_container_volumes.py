"""A named engine volume on the container runtime: mounted writable under the read-only root file system,
the same one for every release, kept across a deploy and a rollback; on Podman and on Docker Engine (where a
fresh volume is root's and ingot gives it to the instance's non-root user first)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker  # type: ignore[import-untyped]
import pytest
from docker.errors import NotFound  # type: ignore[import-untyped]

from tests.support.engines import BASE_IMAGE, DOCKER_HOST_VAR, remove_project_containers
from tests.support.harness import ExampleProject, make_container_example, poll, stop_everything

# Each container notes its release in the volume (${INGOT_RELEASE} expanded by ingot), then serves.
VOLUME_YAML = """\
    volumes: {data: /data}
    command: [sh, -c, "echo ${INGOT_RELEASE} >> /data/boots && exec python3 /app/app.py"]
"""


@pytest.fixture
def engine(each_engine: docker.DockerClient) -> docker.DockerClient:
    return each_engine  # on Podman and on Docker Engine (conftest's engine_kind)


@pytest.fixture
def boxed(engine: docker.DockerClient, engine_kind: str, tmp_path: Path) -> Iterator[ExampleProject]:
    example = make_container_example(tmp_path, replicas=1, extra_service_yaml=VOLUME_YAML)
    if engine_kind == "docker":
        example.env["DOCKER_HOST"] = os.environ[DOCKER_HOST_VAR]
    yield example
    stop_everything(example)
    remove_project_containers(engine, example.project)
    for volume in engine.volumes.list(filters={"name": f"ingot-{example.project}-"}):
        volume.remove(force=True)


def boots(engine: docker.DockerClient, name: str) -> list[str]:
    mountpoint = Path(engine.volumes.get(name).attrs["Mountpoint"])
    return (mountpoint / "boots").read_text().split()


def test_a_volume_is_kept_across_deploy_and_rollback(engine: docker.DockerClient, boxed: ExampleProject) -> None:
    boxed.ingot("deploy", check=True)
    one = boxed.get()["release"]
    name = f"ingot-{boxed.project}-staging-data"  # the spec's first environment
    [box] = engine.containers.list(filters={"label": f"ingot.project={boxed.project}"})
    assert box.attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert any(m.get("Name") == name and m["Destination"] == "/data" for m in box.attrs["Mounts"])
    assert boots(engine, name) == [one]

    boxed.set_version("2")
    boxed.ingot("deploy", check=True)
    two = boxed.get()["release"]
    boxed.ingot("rollback", check=True)
    assert boxed.get()["release"] == one
    poll(lambda: boots(engine, name) == [one, two, one], timeout=10, what="three boots in one volume")

    [listed] = boxed.ingot("volume", "ls", "--env", "staging", "--json", check=True).json
    assert listed["location"] == name and listed["runtime"] == "docker" and listed["used_by"] == [one]
    refused = boxed.ingot("volume", "rm", "data")
    assert refused.code == 2 and "used by the live release" in refused.err
    boxed.ingot("down", check=True)
    boxed.ingot("volume", "rm", "data", check=True)
    with pytest.raises(NotFound):
        engine.volumes.get(name)


def test_volume_rm_takes_this_projects_exited_holders_and_refuses_anothers(engine: docker.DockerClient,
                                                                             boxed: ExampleProject) -> None:
    """An instance's exited container is removed in the background after `ingot down`; the engine refuses to
    remove a volume any container names. Such a leftover is taken with the volume; a running container or one
    not of this project is not ingot's to remove."""
    boxed.ingot("deploy", check=True)
    boxed.ingot("down", check=True)
    name = f"ingot-{boxed.project}-staging-data"
    mounts = {name: {"bind": "/data", "mode": "rw"}}
    foreign = engine.containers.run(BASE_IMAGE, ["sleep", "300"], detach=True, volumes=mounts,
                                    labels={"ingot.test": boxed.project})
    try:
        refused = boxed.ingot("volume", "rm", "data")
        assert refused.code == 2, refused.err
        assert f"mounted by container {foreign.name} (running)" in refused.err
        assert engine.volumes.get(name) is not None  # kept
    finally:
        foreign.remove(force=True)
    leftover = engine.containers.create(BASE_IMAGE, ["true"], volumes=mounts,
                                        labels={"ingot.project": boxed.project})
    boxed.ingot("volume", "rm", "data", check=True)
    with pytest.raises(NotFound):
        engine.volumes.get(name)
    with pytest.raises(NotFound):
        engine.containers.get(leftover.id)
