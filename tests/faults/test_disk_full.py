"""A full disk: a clear error naming the path and the space needed (never `internal error: OperationalError`),
the previous release serving throughout, nothing left `running` or `starting`, and the next deploy working
once space is back, without `ingot unlock`."""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ExampleProject, load, make_example, stop_everything


@pytest.fixture
def small_disk() -> Iterator[Path]:
    # Not under pytest's tmp dir (root's, 0700): instance users must reach checkouts made on it.
    mount = Path(tempfile.mkdtemp(prefix="ingot-small-disk-"))
    mount.chmod(0o711)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        with contextlib.suppress(OSError):
            mount.rmdir()


@pytest.fixture
def on_small_disk(tmp_path: Path, small_disk: Path) -> Iterator[ExampleProject]:
    example = make_example(tmp_path)
    example.env["INGOT_HOME"] = str(small_disk / "state")
    yield example
    stop_everything(example)


def fill(disk: Path, leave: int = 0) -> Path:
    """Write a file until the filesystem has no byte left, then give `leave` bytes back."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * chunk)
    try:
        (disk / "probe").write_bytes(b"x")
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    else:
        raise AssertionError("the disk is not full")
    if leave:
        with open(filler, "r+b") as out:
            out.truncate(filler.stat().st_size - leave)
    return filler


def outcomes(example: ExampleProject) -> list[str]:
    return [h["outcome"] for h in example.ingot("history", "--json", check=True).json]


def instance_states(example: ExampleProject) -> list[str]:
    with contextlib.closing(sqlite3.connect(example.state / "state.db")) as conn:
        return [state for (state,) in conn.execute("SELECT state FROM instances")]


# Nearly full (less than the headroom left: refused before anything is copied), and full to the last byte
# (the state database itself cannot be written).
@pytest.mark.parametrize("leave", [1 << 20, 0], ids=["nearly-full", "full"])
def test_a_full_disk_fails_clearly_keeps_serving_and_the_next_deploy_works(on_small_disk: ExampleProject,
                                                                           small_disk: Path, tmp_path: Path,
                                                                           leave: int) -> None:
    example = on_small_disk
    example.ingot("deploy", check=True)
    v1 = example.get()["release"]
    example.set_version("2")
    with load(example.url, tmp_path) as during:
        filler = fill(small_disk, leave)
        failed = example.ingot("deploy")
        failed_again = example.ingot("deploy")  # no stale lock, no half-made state: the same clear refusal
        served_meanwhile = example.get()["release"]
        filler.unlink()
        done = example.ingot("deploy")
    assert failed.code == 1, failed
    for result in (failed, failed_again):
        assert "internal error" not in result.err and "Traceback" not in result.err, result.err
        assert "OperationalError" not in result.err
    assert str(example.state) in failed.err and "needed" in failed.err and "free" in failed.err, failed.err
    assert failed_again.code == 1 and "locked" not in failed_again.err, failed_again.err
    assert served_meanwhile == v1
    assert done.code == 0, done
    assert during["failures"] == [] and int(during["requests"]) > 20
    assert example.get()["release"] != v1
    assert "running" not in outcomes(example)
    assert not {"spawning", "starting"} & set(instance_states(example))
    assert example.ingot("audit", "verify").code == 0


def test_a_disk_that_fills_during_the_deploy_fails_it_cleanly(on_small_disk: ExampleProject, small_disk: Path,
                                                             tmp_path: Path) -> None:
    """The build found room, then the disk filled before the agent's checkout: it fails there, recorded."""
    example = on_small_disk
    example.env["INGOT_RUNS_HOME"] = str(small_disk / "runs")  # the checkouts on the full disk too
    example.ingot("deploy", check=True)
    v1 = example.get()["release"]
    example.set_version("2")
    example.ingot("build", check=True)  # the new artifact is stored: what is left is the agent's part
    with load(example.url, tmp_path) as during:
        filler = fill(small_disk, 1 << 20)
        failed = example.ingot("deploy")
        filler.unlink()
    assert failed.code == 1, failed
    assert "internal error" not in failed.err and "Traceback" not in failed.err, failed.err
    assert "disk" in failed.err and str(small_disk) in failed.err, failed.err
    assert during["failures"] == [] and int(during["requests"]) > 20
    assert example.get()["release"] == v1
    assert "running" not in outcomes(example)
    assert not {"spawning", "starting"} & set(instance_states(example))
    example.ingot("deploy", check=True)
    assert example.get()["release"] != v1
