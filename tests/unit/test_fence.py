"""The fence's parts on their own: cgroup settings from `resources`, instance groups (in a stand-in for
/sys/fs/cgroup), the child's set-up, checkouts handed over, private directories and the state's modes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ingot.errors import OperationFailed
from ingot.paths import StatePaths, private_dir
from ingot.runtimes import fence
from ingot.runtimes.base import Resources

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_resources_become_cgroup_limits() -> None:
    resources = Resources.from_spec({"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "100m"}})
    settings = fence.group_settings(resources)
    assert settings == {"pids.max": str(fence.PIDS), "memory.max": str(64 * 2**20), "memory.swap.max": "0",
                        "cpu.max": "50000 100000"}
    assert fence.group_settings(Resources()) == {"pids.max": str(fence.PIDS)}
    assert fence.group_settings(Resources.from_spec({"limits": {"cpu": "2"}}), ("cpu",)) == {"cpu.max": "200000 100000"}


@ROOT_ONLY
def test_an_instance_group_is_made_joined_and_removed(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    mount.mkdir()
    (mount / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    cgroups = fence.Cgroups(mount, check_mount=False)
    assert cgroups.support().usable and cgroups.support().controllers == ("memory", "cpu", "pids")
    assert (mount / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    group = cgroups.create("tag-web-1", Resources.from_spec({"limits": {"memory": "1Gi"}}))
    assert group == mount / "ingot" / "tag-web-1" and group.is_dir()
    # The child joins before its program runs (here: a file standing in for cgroup.procs).
    (group / "cgroup.procs").write_text("")
    subprocess.run([sys.executable, "-c", "pass"], check=True,
                   preexec_fn=fence.preexec(None, [], str(group / "cgroup.procs")))
    assert (group / "cgroup.procs").read_text() == "0"
    (group / "cgroup.procs").unlink()
    cgroups.remove(group)
    assert not group.exists()


def test_cgroups_on_a_v1_host_are_not_usable_and_say_why() -> None:
    support = fence.Cgroups(Path("/nonexistent/cgroup")).support()
    assert not support.usable and "not mounted" in support.detail


def test_the_child_gets_no_new_privileges_and_its_limits() -> None:
    limits = fence.rlimits(fenced=False)
    out = subprocess.run([sys.executable, "-c", "import resource, pathlib; print(resource.getrlimit(resource."
                          "RLIMIT_NOFILE)[0]); print([l for l in pathlib.Path('/proc/self/status').read_text()"
                          ".splitlines() if l.startswith('NoNewPrivs')][0])"],
                         check=True, capture_output=True, text=True, preexec_fn=fence.preexec(None, limits, None))
    soft, nnp = out.stdout.split("\n")[:2]
    assert int(soft) == limits[0][1][0] and nnp.split() == ["NoNewPrivs:", "1"]


@ROOT_ONLY
def test_a_checkout_is_readable_by_its_group_only_and_writable_by_none(tmp_path: Path) -> None:
    checkout = tmp_path / "co"
    (checkout / "pkg").mkdir(parents=True)
    (checkout / "app.py").write_text("x")
    (checkout / "run").write_text("#!/bin/sh\n")
    (checkout / "run").chmod(0o755)
    (checkout / "link").symlink_to("/etc/passwd")
    identity = fence.Identity("ingot-x", 4242, 4243)
    fence.hand_over(checkout, identity)
    modes = {p.name: (stat.S_IMODE(os.lstat(p).st_mode), os.lstat(p).st_uid, os.lstat(p).st_gid)
             for p in [checkout, *checkout.iterdir()]}
    assert modes["co"] == (0o550, 0, 4243) and modes["pkg"] == (0o550, 0, 4243)
    assert modes["app.py"] == (0o440, 0, 4243) and modes["run"] == (0o550, 0, 4243)
    assert modes["link"][1:] == (0, 4243)
    assert stat.S_IMODE(os.stat("/etc/passwd").st_mode) == 0o644  # the link was not followed
    assert fence.may(checkout / "app.py", identity, os.R_OK) is (
        all(os.stat(p).st_mode & stat.S_IXOTH for p in checkout.parent.resolve().parents) and
        bool(os.stat(checkout.parent).st_mode & stat.S_IXOTH))
    assert not fence.may(checkout / "app.py", fence.Identity("other", 4244, 4245), os.R_OK)


def test_a_private_directory_is_refused_when_it_is_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    assert private_dir(real) == real and stat.S_IMODE(real.stat().st_mode) == 0o700
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OperationFailed, match="not a private directory"):
        private_dir(tmp_path / "link")


def test_an_older_open_state_is_narrowed(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "logs" / "staging" / "web").mkdir(parents=True)
    (root / "artifacts" / "o").mkdir(parents=True)
    for path in (root / "state.db", root / "logs" / "staging" / "web" / "a.log", root / "artifacts" / "o" / "run"):
        path.write_text("x")
        path.chmod(0o755)
    root.chmod(0o755)
    StatePaths(root).secure()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "state.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "logs" / "staging" / "web" / "a.log").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "logs" / "staging").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "artifacts" / "o" / "run").stat().st_mode) == 0o755  # digested: left alone


def test_no_predictable_temporary_paths_in_the_source() -> None:
    src = Path(fence.__file__).resolve().parents[1]
    offenders = []
    for path in src.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            # gettempdir() only beneath a private, owner-checked directory (paths._socket_dir); /tmp only as
            # a tmpfs inside containers.
            if ("gettempdir()" in code and path.name != "paths.py") or "/tmp/" in code:
                offenders.append(f"{path.relative_to(src)}:{number}: {line.strip()}")
    assert offenders == []


def test_not_root_is_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fence.sysusers, "is_root", lambda: False)
    assert fence.identity_for("hello", "web") is None
    warning = fence.deploy_warning({})
    assert warning is not None and "not root" in warning and "can read its state, keys" in warning
    assert warning in fence.weaker() and fence.isolation()["own_users"] is False
