"""The one small interface every runtime implements: start, stop, observe. No update, no exec."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ingot.store import InstanceRow


@dataclass(frozen=True)
class InstanceRequest:
    """Everything needed to start one fresh instance of one release."""

    instance_id: str
    environment: str
    service: str
    release_id: str
    artifact_path: Path
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path = Path("/dev/null")


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
