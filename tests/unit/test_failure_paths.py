"""Failure paths in the small: a damaged cached artifact, disk space checks, the instance logger, and a row
recorded before its instance is spawned."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingot import diskspace
from ingot.artifacts import ArtifactStore, build_artifact
from ingot.diskspace import DiskFull
from ingot.executor import resolve_instance
from ingot.runtimes import logpipe
from ingot.runtimes.base import Observation
from ingot.runtimes.registry import Runtimes
from ingot.store import InstanceRow, Store
from ingot.store.repo import SPAWNING


def _context(tmp_path: Path) -> Path:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "app.py").write_text("print('hi')\n")
    return context


def _corrupt(store: ArtifactStore, digest: str) -> None:
    app = store.path_for(digest) / "app.py"
    app.chmod(0o644)
    app.write_text("print('owned')\n")


def test_a_damaged_cached_artifact_is_rebuilt_and_replaced(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    context = _context(tmp_path)
    first = build_artifact(store, context)
    _corrupt(store, first.digest)
    again = build_artifact(store, context)
    assert again.digest == first.digest and not again.reused
    assert any("modified: app.py" in line for line in again.replaced_corrupt)
    assert store.intact(first.digest)
    assert (store.path_for(first.digest) / "app.py").read_text() == "print('hi')\n"
    assert build_artifact(store, context).reused  # intact now: reused again
    rebuilt = build_artifact(store, context, rebuild=True)
    assert not rebuilt.reused and rebuilt.replaced_corrupt == ()


def test_builds_and_checkouts_check_the_space_first_and_copy_nothing(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(tmp_path / "store")
    built = build_artifact(store, _context(tmp_path))
    (tmp_path / "ctx" / "app.py").write_text("print('changed')\n")
    monkeypatch.setattr(diskspace, "free_bytes", lambda _path: diskspace.HEADROOM - 1)
    with pytest.raises(DiskFull) as refused:
        build_artifact(store, tmp_path / "ctx")
    assert f"at {store.tmp_dir}" in refused.value.message and "needed" in refused.value.message
    assert not list(store.tmp_dir.iterdir())  # no staging dir left
    runs = tmp_path / "runs"
    with pytest.raises(DiskFull, match=f"a checkout of artifact {built.digest} at {runs}"):
        store.checkout(built.digest, runs)
    assert not list(runs.iterdir())


def test_the_logger_rotates_by_size_keeps_whole_lines_and_ends_with_its_input(tmp_path: Path) -> None:
    log = tmp_path / "instance.log"
    lines = b"".join(b"line %06d %s\n" % (i, b"x" * 50) for i in range(20_000))  # about 1.2 MB
    done = subprocess.run([sys.executable, "-I", "-S", logpipe.__file__, str(log), "100000", "2"], input=lines,
                          timeout=60, check=True)
    assert done.returncode == 0
    files = [log, log.with_name("instance.log.1"), log.with_name("instance.log.2")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)
    assert all(p.stat().st_size <= 100_000 + logpipe.CHUNK for p in files)
    kept = b"".join(p.read_bytes() for p in reversed(files))
    assert lines.endswith(kept)  # the newest output, in order, nothing split or lost within it


def test_the_logger_counts_what_it_could_not_write_and_says_so() -> None:
    sink = logpipe._Log("/dev/full", maxBytes=0, encoding="utf-8")  # every write fails: ENOSPC
    sink.terminator = ""
    sink.write("lost\n")
    assert sink.dropped == len("lost\n")
    sink.baseFilename = "/dev/null"
    sink.write("kept\n")
    assert sink.dropped == 0


class _Found:
    """A runtime that finds (or not) the process a spawning row names."""

    name = "process"

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def find(self, instance: InstanceRow, state_dir: str) -> InstanceRow | None:
        if self.pid is None:
            return None
        return InstanceRow(**{**instance.__dict__, "pid": self.pid, "port": 4000, "state": "starting"})

    def observe(self, instance: InstanceRow) -> Observation:
        return Observation(alive=True)


def _spawning(store: Store, instance_id: str) -> InstanceRow:
    row = InstanceRow(instance_id, "staging", "web", "r1", "process", None, None, "127.0.0.1", 0, "/dev/null",
                      time.time(), None, SPAWNING)
    store.add_instance(row)
    return row


@pytest.mark.parametrize("pid", [1234, None], ids=["found", "never-spawned"])
def test_a_spawning_row_is_resolved_once_by_whoever_comes_first(tmp_path: Path, pid: int | None) -> None:
    store = Store(tmp_path / "state")
    runtimes = Runtimes()
    runtimes._made["process"] = _Found(pid)  # type: ignore[assignment]
    row = _spawning(store, "web-1")
    resolved = resolve_instance(store, runtimes, str(tmp_path / "state"), row)
    assert resolved.pid == pid and resolved.state == ("starting" if pid else "failed")
    assert store.get_instance("web-1") is not None
    assert store.get_instance("web-1").state == resolved.state  # type: ignore[union-attr]
    # The spawner, coming second, learns that its row was given up on (and so stops what it started).
    assert not store.fill_instance(InstanceRow(**{**row.__dict__, "pid": 99, "state": "starting"}))


def test_a_spawner_that_filled_its_row_first_wins_over_a_resolve(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    runtimes = Runtimes()
    runtimes._made["process"] = _Found(None)  # type: ignore[assignment]
    row = _spawning(store, "web-2")
    assert store.fill_instance(InstanceRow(**{**row.__dict__, "pid": 77, "port": 5000, "state": "starting"}))
    resolved = resolve_instance(store, runtimes, str(tmp_path / "state"), row)
    assert (resolved.pid, resolved.port, resolved.state) == (77, 5000, "starting")
