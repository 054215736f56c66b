"""The one small interface every runtime implements (process, Docker Engine, Podman): start, stop,
observe. No update, no exec: an instance is replaced, never changed.

Contract every implementation keeps (tests/contract/test_runtime.py runs the same tests against the
process runtime, Podman and Docker Engine, each for real):

- `start(request)` spawns ONE fresh instance and returns its row (`state="starting"`): `host`/`port`
  is where it will be reached from this machine (127.0.0.1, a port of its own), `pid` and/or `handle`
  say how to find it again (process: pid + its kernel start time + checkout; containers: container
  ID + main pid). It does NOT wait for the instance to listen: readiness is the caller's health gate.
  Recording the row is the caller's job (the executor writes the intent before and fills it after).
  Anything that keeps it from starting (a missing artifact, command or image, an image that would
  run as root against `run_as_non_root`, an engine error) raises `OperationFailed` naming the
  instance, at once, never a hang, and leaves nothing running or labelled behind. An instance that
  dies at once is reported either by `start` (containers: `OperationFailed` with its exit code and
  last log lines, since the engine unpublishes a dead container's port) or by the next `observe`
  (process, and a one-off container, whose ending is its result and which publishes nothing to
  read): callers handle both.
- Environment: the request's `env` (release env, config, decrypted secrets: secrets reach an
  instance only through its environment), then ingot's variables, which win over same-named ones:
  `PORT` (the port to listen on: the host port for a process, `container_port` in a container),
  `INGOT_RELEASE`, `INGOT_INSTANCE`, `INGOT_SERVICE`, `INGOT_ENVIRONMENT`, `INGOT_PROJECT`. Nothing
  else of ingot's own environment leaks in (the process runtime passes PATH, LANG, LC_ALL, TZ, HOME,
  TMPDIR; an image brings its own ENV).
- `stop(instance, timeout)` asks it to end (SIGTERM, and SIGCONT so that a stopped, SIGSTOPped or
  paused instance can act on it), waits up to `timeout`, then SIGKILLs it, and returns once it no
  longer runs (bounded: at most about 10 s after the kill). Idempotent: an instance that already
  exited, was already stopped, or never existed (a row without pid or handle, a container gone) is
  fine, and nothing is raised. Containers are then removed in the background.
- `observe(instance)` is read-only and cheap. `alive` means it exists and has not exited; a stopped
  (SIGSTOP) or paused instance is alive (its health probes judge it, not this). Dead comes with the
  exit code when the runtime knows it, stably on every later call: process runtime for the instances
  it started itself (a pid not ours, after an agent restart, has no exit status to read), containers
  until they are stopped and removed. A pid reused by another process is not mistaken for the
  instance (kernel start time). An engine that cannot be asked raises `OperationFailed`: not knowing
  is not dead.
- `log_tail(instance, n)` is its last `n` lines of stdout and stderr, interleaved as written, while
  it runs and after it exited. After `stop`, the process runtime keeps its (capped, rotated) log
  file; a container's log goes with the container. On every runtime the log on disk is capped
  (`log_max_bytes()` per file, `LOG_BACKUPS` older files): an instance that writes without end never
  fills the disk.
- Agent restart: a NEW runtime object (another process) observes, stops and reads the logs of
  instances an earlier one started, from their rows alone; `find(row, state_dir)` fills in a row
  whose spawn was never recorded, by the labels the instance carries (process: INGOT_INSTANCE and
  INGOT_STATE in its environment; containers: `ingot.instance` and `ingot.state` labels).
- Containers only: `hardening` and `resources` become the engine's settings (read-only root,
  no-new-privileges, capabilities, tmpfs; user; memory and CPU limits, CPU shares, memory
  reservation); `resources` for the process runtime are the privilege work's (cgroups).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from ingot.spec.quantities import quantity_value
from ingot.store import InstanceRow

# Every runtime caps an instance's log: at most LOG_MAX_BYTES per file ($INGOT_LOG_MAX_BYTES) and
# LOG_BACKUPS rotated files beside it (the process runtime's logger; the engines' json-file/k8s-file
# log driver, where Podman keeps one file and truncates it at the cap instead).
LOG_MAX_BYTES_ENV = "INGOT_LOG_MAX_BYTES"
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 2


def log_max_bytes() -> int:
    text = os.environ.get(LOG_MAX_BYTES_ENV, "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else LOG_MAX_BYTES


@dataclass(frozen=True)
class Hardening:
    """How locked down a container instance is. The defaults are the hardened ones."""

    read_only: bool = True
    no_new_privileges: bool = True
    drop_all_capabilities: bool = True
    add_capabilities: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ("/tmp",)
    # As Kubernetes' runAsNonRoot/runAsUser: with run_as_non_root, an image whose user is root (or a
    # name, which cannot be checked without running it) is refused unless run_as_user gives a uid.
    run_as_non_root: bool = True
    run_as_user: int | None = None


@dataclass(frozen=True)
class Resources:
    """One instance's `resources` (Kubernetes-shaped) in the engine's units; None: not limited.

    limits.memory is a hard limit (the instance is OOM-killed above it), limits.cpu a CPU-time quota;
    requests.cpu becomes a relative CPU weight (1024 per CPU, as the kubelet sets cpu.shares) and
    requests.memory a soft reservation. ephemeral-storage is not enforced by these engines (it needs an
    overlay on XFS with project quotas): it is for Kubernetes targets only.
    """

    memory_bytes: int | None = None
    nano_cpus: int | None = None
    cpu_shares: int | None = None
    memory_reservation_bytes: int | None = None

    @classmethod
    def from_spec(cls, resources: dict[str, Any] | None) -> Resources:
        """From a release's `resources` (`{"limits": {...}, "requests": {...}}`, quantities as text)."""
        limits = (resources or {}).get("limits") or {}
        requests = (resources or {}).get("requests") or {}

        def scaled(table: dict[str, Any], key: str, factor: int, least: int = 1) -> int | None:
            text = table.get(key)
            if text is None:
                return None
            return max(least, int(quantity_value(str(text)) * Decimal(factor)))

        return cls(memory_bytes=scaled(limits, "memory", 1), nano_cpus=scaled(limits, "cpu", 10**9),
                   cpu_shares=scaled(requests, "cpu", 1024, least=2),
                   memory_reservation_bytes=scaled(requests, "memory", 1))


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
    container_port: int | None = 8000  # None: a worker, nothing published and no PORT
    hardening: Hardening = Hardening()
    resources: Resources = Resources()
    # A one-off instance (`ingot run`, a release_command) run attached to the caller's terminal: the process
    # runtime gives it the caller's stdin, stdout and stderr (a TTY if they are one) instead of a log.
    attach: bool = False
    # A container one-off of `ingot run`: created with stdin open, the caller's stdin fed to it (`feed_stdin`)
    # and closed at its end, so `ingot run web -- cmd < file` works there too.
    stdin: bool = False
    # A container one-off of `ingot run` on a terminal (ingot.terminal): created with a TTY of its own and
    # attached to it before it starts (nothing it writes first is lost); `terminal` joins it to the caller's.
    terminal: bool = False
    # `ingot run` or a release_command: no instance row, so drift and self-heal must leave it alone.
    oneoff: bool = False
    # The service's volumes: a directory on the host (process runtime) or an engine volume (containers).
    volumes: tuple[VolumeMount, ...] = ()
    worker: bool = False  # port: null: no port chosen, no PORT variable


@dataclass(frozen=True)
class VolumeMount:
    """One named volume of an instance. `source`: the host directory (process runtime), which the instance
    finds in INGOT_VOLUME_<NAME>; or the engine volume's name (containers), mounted at `target`."""

    name: str
    target: str
    source: str


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

    def interrupt(self, instance: InstanceRow) -> None:
        """Pass a Ctrl-C (SIGINT) on to an attached one-off's command, which decides what it means."""
        ...

    def follow_log(self, instance: InstanceRow, tail: int | None = None,
                   stop: threading.Event | None = None) -> Iterator[str]:
        """Its log lines as they are written: the last `tail` first (None: from its start); until it ends
        or `stop` is set. Blocking: read it in a thread."""
        ...

    def find(self, instance: InstanceRow, state_dir: str) -> InstanceRow | None:
        """The process or container a row without pid or handle describes (its intent was recorded, and
        then the agent stopped before it learnt what it spawned), found by the labels it carries: the
        row filled in, or None if nothing carries them. Read-only."""
        ...
