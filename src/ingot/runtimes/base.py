"""The one small interface every runtime implements: start, stop, observe. No update, no exec."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ingot.store import InstanceRow


@dataclass(frozen=True)
class Hardening:
    """How locked down a container instance is. The defaults are the hardened ones."""

    read_only: bool = True
    no_new_privileges: bool = True
    drop_all_capabilities: bool = True
    add_capabilities: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ("/tmp",)


@dataclass(frozen=True)
class InstanceRequest:
    """Everything needed to start one fresh instance of one release.

    Process runtime: `artifact_path` and `command`. Container runtimes: `image` (an image ID, never a
    tag), `container_port`, `hardening`, and `command` only if it overrides the image's own.
    """

    instance_id: str
    environment: str
    service: str
    release_id: str
    artifact_path: Path | None = None
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path = Path("/dev/null")
    project: str = ""
    state_dir: str = ""  # which ingot owns it: two projects of one name in two places stay apart
    image: str | None = None
    container_port: int = 8000
    hardening: Hardening = Hardening()
    # The spec's `resources` ({"limits": {...}, "requests": {...}}): process instances' cgroup limits.
    resources: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    alive: bool
    exit_code: int | None = None
    detail: str = ""


class Runtime(Protocol):
    name: str

    def start(self, request: InstanceRequest) -> InstanceRow: ...

    def stop(self, instance: InstanceRow, timeout: float) -> None: ...

    def observe(self, instance: InstanceRow) -> Observation: ...

    def log_tail(self, instance: InstanceRow, lines: int = 20) -> list[str]: ...

    def find(self, instance: InstanceRow, state_dir: str) -> InstanceRow | None:
        """The process or container a row without pid or handle describes (its intent was recorded, and
        then the agent stopped before it learnt what it spawned), found by the labels it carries: the
        row filled in, or None if nothing carries them. Read-only."""
        ...
