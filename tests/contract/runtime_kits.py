"""One `Kit` per runtime implementation for the runtime contract: the runtime, a way to get a new one (an
agent restart), requests for the contract app (tests/contract/runtime_app), and clean-up.

process: the app's file as the artifact, `python app.py`, no engine needed. podman / docker: the app's
image, built once per session on each engine (from the engine's cache after the first run).
"""

from __future__ import annotations

import http.client
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import docker  # type: ignore[import-untyped]

from ingot.artifacts.store import force_rmtree
from ingot.runtimes.base import Hardening, InstanceRequest, Runtime
from ingot.runtimes.docker import DockerRuntime, containers_labelled
from ingot.runtimes.process import ProcessRuntime, labelled_processes, terminate_group
from ingot.store import InstanceRow
from tests.containers.helpers import wait_for as poll_until
from tests.support import http_json
from tests.support.engines import BASE_IMAGE, client_at, remove_project_containers

APP_DIR = Path(__file__).with_name("runtime_app")
APP_TAG = "localhost/ingot-contract-app:latest"
CONTAINER_PORT = 8000
T = TypeVar("T")


@dataclass
class Kit:
    kind: str  # process | podman | docker
    runtime: Runtime
    fresh: Callable[[], Runtime]  # a new runtime object, as a restarted agent would make
    workdir: Path
    image: str | None = None  # the app's image ID (container kinds)
    engine_url: str | None = None
    # process: the checkout it runs from, outside pytest's tmp dir (private to root), as the agent's are.
    artifact: Path | None = None
    started: list[InstanceRow] = field(default_factory=list)
    project: str = field(default_factory=lambda: f"c{uuid.uuid4().hex[:10]}")

    @property
    def state_dir(self) -> str:
        return str(self.workdir / "state")

    def request(self, env: dict[str, str] | None = None, **changes: Any) -> InstanceRequest:
        instance_id = f"web-{uuid.uuid4().hex[:8]}"
        base = InstanceRequest(
            instance_id=instance_id, environment="staging", service="web", release_id="r" + uuid.uuid4().hex[:11],
            project=self.project, state_dir=self.state_dir, env=dict(env or {}),
            log_path=self.workdir / "logs" / "staging" / "web" / f"{instance_id}.log",  # as ingot lays them out
        )
        if self.kind == "process":
            base = replace(base, artifact_path=self.artifact, command=("python", "app.py"))
        else:
            base = replace(base, image=self.image, container_port=CONTAINER_PORT, hardening=Hardening())
        return replace(base, **changes)

    def start(self, request: InstanceRequest) -> InstanceRow:
        row = self.runtime.start(request)
        self.started.append(row)
        return row

    def log_files(self, row: InstanceRow) -> list[Path]:
        """The files on disk that hold the instance's log: its log and the rotated ones beside it
        (process), or the engine's log file and its rotations (containers)."""
        if self.kind == "process":
            path = Path(row.log_path)
        else:
            container = client_at(str(self.engine_url)).containers.get(row.handle)
            path = Path(container.attrs["LogPath"])
        return sorted(p for p in path.parent.glob(path.name + "*") if p.is_file())

    def running_labelled(self) -> list[str]:
        """Instance ids of this kit's that still run (process) or still exist (containers)."""
        if self.kind == "process":
            return [env.get("INGOT_INSTANCE", "?") for _, env in labelled_processes(self.state_dir)]
        client = client_at(str(self.engine_url))
        found = containers_labelled(client, f"ingot.project={self.project}")
        return [str(c.labels.get("ingot.instance")) for c in found]

    def clean_up(self) -> None:
        if self.kind == "process":
            for pid, _ in labelled_processes(self.state_dir):
                terminate_group(pid, 0.5)
            if self.artifact is not None:
                force_rmtree(self.artifact.parent)
            return
        client = client_at(str(self.engine_url))
        # A container the runtime's stop is removing in the background may vanish mid-listing.
        remove_project_containers(client, self.project)


def process_kit(workdir: Path) -> Kit:
    """As root, instances run as a user of their own, which must reach the checkout: an unguessable
    directory others may pass through (0711), like the agent's runs home."""
    workdir.mkdir(parents=True)
    top = Path(tempfile.mkdtemp(prefix="ingot-contract-"))
    top.chmod(0o711)
    artifact = top / "artifact"
    artifact.mkdir()
    shutil.copy2(APP_DIR / "app.py", artifact / "app.py")
    return Kit("process", ProcessRuntime(), ProcessRuntime, workdir, artifact=artifact)


def container_kit(kind: str, url: str, image: str, workdir: Path) -> Kit:
    return Kit(kind, DockerRuntime(client_at(url)), lambda: DockerRuntime(client_at(url)), workdir, image=image,
               engine_url=url)


def build_app_image(client: docker.DockerClient, context: Path) -> str:
    for source in APP_DIR.iterdir():
        shutil.copy2(source, context / source.name)
    return DockerRuntime(client).build_image(context, tag=APP_TAG, build_args={"BASE": BASE_IMAGE})


# ---- talking to an instance ------------------------------------------------------------------------


def get_json(row: InstanceRow, path: str, timeout: float = 5.0) -> Any:
    return http_json.get_json(row.host, row.port, path, timeout)


def answers(row: InstanceRow) -> bool:
    try:
        return bool(get_json(row, "/healthz", timeout=1.0)["ok"])
    except (OSError, AssertionError, ValueError, http.client.HTTPException):
        return False


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` and the last error."""
    return poll_until(check, what=what, timeout=timeout)


def answering(row: InstanceRow, timeout: float = 30.0) -> None:
    wait_for(lambda: answers(row), f"instance {row.id} to answer on {row.host}:{row.port}", timeout)


def intent_of(row: InstanceRow) -> InstanceRow:
    """The row as recorded before the spawn: what only spawning tells is not known yet."""
    return replace(row, pid=None, proc_start=None, port=0, handle=None, state="spawning")
