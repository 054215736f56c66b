"""The Express app (examples/express) in a container: built by the engine from its Containerfile on a
local base image with Node.js (no node image can be pulled here), deployed, changed and rolled back
with zero failed requests."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker  # type: ignore[import-untyped]
import pytest
from docker.errors import ImageNotFound  # type: ignore[import-untyped]

from ingot.runtimes.docker import DockerRuntime
from tests.containers.helpers import BASE_IMAGE
from tests.support.engines import remove_project_containers
from tests.support.harness import REPO, TEST_MIN_READY, ExampleProject, free_port, load, stop_everything

EXPRESS = REPO / "examples" / "express"
NODE_BASE = Path(__file__).with_name("node-base")
NODE_IMAGE = "localhost/ingot-node:bookworm"  # what examples/express/Containerfile builds FROM
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's bundle (with any CA the machine added)


@pytest.fixture(scope="session")
def node_base(engine: docker.DockerClient, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The base image with Node.js, built once (apt-get install nodejs npm: a few minutes) and then kept."""
    try:
        return str(engine.images.get(NODE_IMAGE).id)
    except ImageNotFound:
        pass
    context = tmp_path_factory.mktemp("node-base")
    shutil.copy2(NODE_BASE / "Containerfile", context / "Containerfile")
    shutil.copy2(HOST_CA, context / "host-ca.crt")
    output: list[str] = []
    try:
        return runtime.build_image(context, tag=NODE_IMAGE, build_args={"BASE": BASE_IMAGE},
                                   on_output=output.append)
    except Exception as exc:  # the Debian mirror unreachable, say: said with the build's own words
        raise AssertionError(f"building {NODE_IMAGE} failed: {exc}\n" + "\n".join(output[-20:])) from exc


@pytest.fixture
def boxed_express(engine: docker.DockerClient, node_base: str, tmp_path: Path) -> Iterator[ExampleProject]:
    root = tmp_path / "express"
    shutil.copytree(EXPRESS, root, ignore=shutil.ignore_patterns(".ingot", "node_modules", "dist", "*.pub",
                                                                 "ingot.yaml"))
    port = free_port()
    project = f"ex-{uuid.uuid4().hex[:8]}"
    spec = (root / "ingot.container.yaml").read_text()
    spec = spec.replace("project: express-container", f"project: {project}")
    spec = spec.replace('listen: "127.0.0.1:8091"', f'listen: "127.0.0.1:{port}"')
    spec = spec.replace("min_ready: 3s", f"min_ready: {TEST_MIN_READY}")
    (root / "ingot.container.yaml").unlink()
    (root / "ingot.yaml").write_text(spec)
    example = ExampleProject(root, port, _project=project)
    yield example
    stop_everything(example)
    remove_project_containers(engine, project)


@pytest.mark.timeout(900)  # the first run builds the Node.js base (apt-get install nodejs npm: minutes)
def test_express_in_a_container_deploys_changes_and_rolls_back_with_zero_failed_requests(
        boxed_express: ExampleProject, tmp_path: Path) -> None:
    app = boxed_express
    first = app.ingot("deploy", timeout=600)
    assert first.code == 0, first.out + first.err
    one = app.get()
    assert one["version"] == "1"
    (app.root / "src" / "version.js").write_text('module.exports = { VERSION: "2" };\n')
    with load(app.url, tmp_path) as during_deploy:
        second = app.ingot("deploy", timeout=600)
    assert second.code == 0, second.out + second.err
    assert "Using cache" in second.out  # the unchanged lockfile's `npm ci` layer, from the engine's cache
    with load(app.url, tmp_path) as during_rollback:
        app.ingot("rollback", check=True)
    for report in (during_deploy, during_rollback):
        assert report["failures"] == [], report["failures"][:5]
        assert set(report["versions"]) <= {"1", "2"} and int(report["requests"]) > 50
    assert during_deploy["versions"].get("2", 0) > 0
    assert app.get() == one
    assert app.ingot("drift", "--json").json == []
