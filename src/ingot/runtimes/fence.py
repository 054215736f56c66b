"""The fence around a process instance: its own user, a checkout only it can read, limits.

When ingot runs as root, every service's process instances run as a system user of their own, one
per project and service (`ingot-<project>-<service>-<hash8>`, see `ingot.sysusers`), created on first
use. So an instance cannot read ingot's state directory (0700, root), its database, keys, sockets or
logs, the checkouts of other services, or other services' environments. In detail:

- **Checkout.** Instances run from a copy of the artifact under `runs_home()` (`/var/lib/ingot/runs`,
  or $INGOT_RUNS_HOME), outside the state directory: the state directory stays 0700, and the directories
  above it (`/root`, say) need not be open to anyone. The runs directories are root's and 0711
  (traversable, not listable: a checkout's name holds a random part); each checkout is owned by root
  with the service's group, directories 0550 and files 0440 (0550 if executable): only that service's
  user can read it, and not even it can change it, so what runs is what was released.
- **no_new_privs**, set before the program is executed: no setuid binary, no file capability gives it
  more than it has.
- **rlimits**: open files (`RLIMIT_NOFILE`, $INGOT_INSTANCE_NOFILE, 65536) and processes
  (`RLIMIT_NPROC`, $INGOT_INSTANCE_NPROC, 4096; counted per user, so over all of the service's
  instances together).
- **cgroup v2**, where the machine allows it (/sys/fs/cgroup is a cgroup2 mount, ingot may write to it
  and enable the memory, cpu and pids controllers): each instance gets a group of its own under
  `/sys/fs/cgroup/ingot/`, joined before its program starts, with the service's `resources.limits`
  (memory -> memory.max, with no swap; cpu -> cpu.max) and pids.max ($INGOT_INSTANCE_PIDS, 4096).
  Where cgroup v2 is not usable (cgroup v1 or hybrid hosts, a container without a delegated
  cgroup), the reason is said once in the agent log and in `ingot status`; nothing fails.
- **Secrets** reach an instance through its own environment, and only there. The kernel lets only the
  same user (or root) read `/proc/PID/environ`, so once each service has its own uid no other
  service's instance can read them; the environment never touches a disk, needs no file that must be
  created, owned, and removed again with every instance, and is how the container runtimes and
  Kubernetes pass them too. (The instances of one service share a user and can read each other's
  environment: they hold the same secrets.) A file would add nothing a different uid does not give.
- **Logs**: an instance writes only to a pipe; its logger (running as ingot) writes the file, 0600 in
  the 0700 state directory. It can always write its log, no other service can read it.

When ingot is not root, instances run as ingot's own user: they can read everything that user can,
ingot's state and keys included, and each other's environments. no_new_privs and the open-files
limit still apply; the processes limit does not (it would count every process of the user), nor do
cgroups. `weaker()` says so, for `ingot status` and `ingot deploy`.

Everything the child does before its program runs (join the cgroup, limits, no_new_privs, drop the
groups, gid and uid) happens in `preexec`, with each value worked out beforehand: it calls only the
`os`, `resource` and a prepared `prctl`, none of which takes a lock another thread could hold at fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import pwd
import resource
import shutil
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingot import sysusers
from ingot.errors import OperationFailed
from ingot.paths import RUNS_HOME, RUNS_HOME_ENV, runs_home
from ingot.runtimes.base import Resources

log = logging.getLogger("ingot.agent")

NOFILE_ENV, NOFILE = "INGOT_INSTANCE_NOFILE", 65536
NPROC_ENV, NPROC = "INGOT_INSTANCE_NPROC", 4096
PIDS_ENV, PIDS = "INGOT_INSTANCE_PIDS", 4096
NO_HOME = sysusers.NO_HOME
CGROUP_MOUNT = Path("/sys/fs/cgroup")
CGROUP_BASE = "ingot"
CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
_SWEEP_AGE_S = 60.0  # an empty group older than this is a leftover (its instance died unstopped)
_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


@dataclass(frozen=True)
class Identity:
    """The system user a service's instances run as."""

    user: str
    uid: int
    gid: int


def is_fenced() -> bool:
    """Whether instances get users of their own: only root can give them."""
    return sysusers.is_root()


def identity_for(project: str, service: str) -> Identity | None:
    """The user of `service` of `project`, created on first use; None when ingot is not root. Looked up
    each time (a read of /etc/passwd), never cached: a user removed and made again gets another uid."""
    if not is_fenced():
        return None
    name = sysusers.user_name(project, service)
    uid, gid = sysusers.ensure_system_user(name, comment=f"ingot {project}/{service}")
    return Identity(name, uid, gid)


def is_instance_user(uid: int) -> bool:
    """Whether `uid` is one of the users `identity_for` makes (named `ingot-...`, described
    `ingot <project>/<service>`): not root, not the build user, not any other account."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return False
    return entry.pw_name.startswith(sysusers.PREFIX) and entry.pw_gecos.startswith("ingot ") and "/" in entry.pw_gecos


# ---- checkouts ---------------------------------------------------------------------------------

def open_runs_dir(runs_dir: Path) -> None:
    """Make the runs home and `runs_dir` below it root's, 0711, refusing a symlink or a directory of someone
    else's (they could swap what is in it). Above the home nothing is changed, only checked: every
    directory there must already be traversable by everyone (ingot's own /var/lib/ingot is made so)."""
    home = runs_home()
    if home == RUNS_HOME:
        home.parent.mkdir(parents=True, exist_ok=True)
        _open_dir(home.parent, listable=True)
    for directory in reversed(home.parents):
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            raise OperationFailed(f"instances cannot reach their checkouts under {home}: {directory} is not "
                                  "traversable by other users", details=[f"set {RUNS_HOME_ENV} to a directory "
                                                                         "under one that is, e.g. /var/lib"])
    for directory in [home, *[p for p in reversed(runs_dir.parents) if home in p.parents], runs_dir]:
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o711)
        _open_dir(directory)


def _open_dir(directory: Path, *, listable: bool = False) -> None:
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise OperationFailed(f"{directory} is not a directory of root's; ingot will not run instances from "
                              "under it", details=[f"remove it, or set {RUNS_HOME_ENV} elsewhere"])
    mode = stat.S_IMODE(st.st_mode)
    wanted = (mode | 0o711) & ~0o022 if listable else 0o711
    if mode != wanted:
        os.chmod(directory, wanted)


def own_volume(directory: Path, identity: Identity | None) -> None:
    """Make a volume's directory (made if missing) the instance user's alone, 0700, and the directories
    above it up to the runs home traversable (0711, root's) as a checkout's are. Only the top is chowned:
    what the instances wrote in it is theirs already."""
    if identity is None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return
    open_runs_dir(directory.parent)
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise OperationFailed(f"volume {directory} is not a directory; ingot will not hand it to an instance")
    if st.st_uid != identity.uid or st.st_gid != identity.gid:
        os.lchown(directory, identity.uid, identity.gid)
    os.chmod(directory, 0o700)


def hand_over(checkout: Path, identity: Identity) -> None:
    """Make `checkout` readable by `identity`'s group only, and writable by nobody but root.

    Walks without following a symlink: a link's own owner changes, never what it points at.
    """
    st = os.lstat(checkout)
    if st.st_gid == identity.gid and stat.S_IMODE(st.st_mode) == 0o550:
        return  # the first replica's start did it (a checkout is shared by the instances of a release)
    for top, dirs, files in os.walk(checkout, topdown=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            path = os.path.join(top, name)
            entry = os.lstat(path)
            os.lchown(path, 0, identity.gid)
            if not stat.S_ISLNK(entry.st_mode):
                os.chmod(path, 0o550 if entry.st_mode & 0o111 else 0o440)
        for name in dirs:
            path = os.path.join(top, name)
            if not os.path.islink(path):
                os.chown(path, 0, identity.gid)
                os.chmod(path, 0o550)
    os.chown(checkout, 0, identity.gid)
    os.chmod(checkout, 0o550)


def may(path: Path, identity: Identity, bits: int) -> bool:
    """Whether `identity` (its uid and its one group) has `bits` (os.R_OK | os.X_OK ...) on `path` and can
    reach it: search permission on every directory above. From the modes; ACLs are not looked at."""
    try:
        real = path.resolve(strict=True)
    except OSError:
        return False
    for directory in [*reversed(real.parents)]:
        if not _allows(os.stat(directory), identity, os.X_OK):
            return False
    return _allows(os.stat(real), identity, bits)


def _allows(st: os.stat_result, identity: Identity, bits: int) -> bool:
    if st.st_uid == identity.uid:
        granted = (st.st_mode >> 6) & 0o7
    elif st.st_gid == identity.gid:
        granted = (st.st_mode >> 3) & 0o7
    else:
        granted = st.st_mode & 0o7
    return granted & bits == bits


def interpreter_for(identity: Identity | None) -> str:
    """The Python for an instance's `python` command: ingot's own (the artifact's dependencies were
    installed for it), or, when its user cannot run that one (a Python under /root, say), a system
    Python of the same version."""
    if identity is None or may(Path(sys.executable), identity, os.R_OK | os.X_OK):
        return sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        candidate = Path(directory) / version
        if candidate.exists() and may(candidate, identity, os.R_OK | os.X_OK):
            return str(candidate)
    found = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if found and may(Path(found), identity, os.R_OK | os.X_OK):
        return found
    raise OperationFailed(f"the instances of user {identity.user} cannot run ingot's Python ({sys.executable}: "
                          "a directory above it is private), and there is no system-wide "
                          f"{version} they could run instead",
                          details=[f"install {version} system-wide (apt-get install {version}), or ingot "
                                   "under a directory everyone can read (/opt, /usr/local)"])


# ---- limits ------------------------------------------------------------------------------------

def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else default


def rlimits(fenced: bool) -> list[tuple[int, tuple[int, int]]]:
    """(resource, (soft, hard)) for an instance, never above ingot's own hard limits (root in a container
    may not raise them). Not fenced, it shares ingot's uid: no processes limit, which would count every
    process of that user."""
    wanted = [(resource.RLIMIT_NOFILE, _env_int(NOFILE_ENV, NOFILE))]
    if fenced:
        wanted.append((resource.RLIMIT_NPROC, _env_int(NPROC_ENV, NPROC)))
    limits = []
    for which, value in wanted:
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        limits.append((which, (value, value)))
    return limits


def preexec(identity: Identity | None, limits: list[tuple[int, tuple[int, int]]],
            cgroup_procs: str | None) -> Callable[[], None]:
    """What the child runs between fork and exec (see the module's docstring)."""

    def run() -> None:
        try:
            fence_child()
        except BaseException as exc:
            # Its stderr is the log pipe already: the reason is in the instance's log, for `ingot logs`.
            os.write(2, f"ingot: could not fence the instance before it started: {exc!r}\n".encode())
            raise

    def fence_child() -> None:
        if cgroup_procs is not None:  # as root still: join the instance's group before anything runs
            fd = os.open(cgroup_procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        for which, values in limits:
            resource.setrlimit(which, values)
        if _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if identity is not None:
            os.setgroups([])
            os.setresgid(identity.gid, identity.gid, identity.gid)
            os.setresuid(identity.uid, identity.uid, identity.uid)

    return run


# ---- cgroup v2 -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CgroupSupport:
    usable: bool
    detail: str
    controllers: tuple[str, ...] = ()


class Cgroups:
    """Instance groups under `<mount>/ingot/`. `mount` is /sys/fs/cgroup but for tests."""

    def __init__(self, mount: Path = CGROUP_MOUNT, *, check_mount: bool = True) -> None:
        self.mount = mount
        self.base = mount / CGROUP_BASE
        self._check_mount = check_mount
        self._support: CgroupSupport | None = None

    def support(self) -> CgroupSupport:
        """Whether instance groups can be made here, and why not; worked out (and logged) once."""
        if self._support is None:
            self._support = self._probe()
            if not self._support.usable:
                log.warning("cgroup v2 is not usable for process instances (%s): their resources are not "
                            "applied; rlimits still are", self._support.detail)
        return self._support

    def _probe(self) -> CgroupSupport:
        if self._check_mount:
            fstype = _mount_type(self.mount)
            if fstype != "cgroup2":
                what = "not mounted" if fstype is None else f"a {fstype} mount (cgroup v1 or hybrid)"
                return CgroupSupport(False, f"{self.mount} is {what}, not cgroup v2")
        if not sysusers.is_root():
            return CgroupSupport(False, "ingot is not root")
        try:
            available = (self.mount / "cgroup.controllers").read_text().split()
        except OSError as exc:
            return CgroupSupport(False, f"cannot read {self.mount / 'cgroup.controllers'}: {exc.strerror}")
        wanted = tuple(c for c in CONTROLLERS if c in available)
        if not wanted:
            return CgroupSupport(False, f"none of the {', '.join(CONTROLLERS)} controllers is available")
        enable = " ".join(f"+{c}" for c in wanted)
        try:
            (self.mount / "cgroup.subtree_control").write_text(enable)
            with contextlib.suppress(FileExistsError):
                self.base.mkdir(mode=0o755)
            (self.base / "cgroup.subtree_control").write_text(enable)
        except OSError as exc:
            return CgroupSupport(False, f"cannot enable {enable} under {self.mount}: {exc.strerror or exc}")
        missing = [c for c in CONTROLLERS if c not in wanted]
        detail = f"{self.base}, controllers {', '.join(wanted)}" + (
            f" ({', '.join(missing)} not available)" if missing else "")
        return CgroupSupport(True, detail, wanted)

    def create(self, name: str, resources: Resources) -> Path | None:
        """A fresh group `name` with the limits of `resources` (the spec's); None where not usable."""
        support = self.support()
        if not support.usable:
            return None
        self._sweep(name.split("-", 1)[0] + "-")
        group = self.base / name
        group.mkdir(mode=0o755)
        try:
            for file, value in group_settings(resources, support.controllers).items():
                if (group / file).exists():
                    (group / file).write_text(value)
        except OSError as exc:
            self.remove(group)
            raise OperationFailed(f"cannot set the limits of cgroup {group}: {exc.strerror or exc}") from exc
        return group

    def group_of(self, pid: int) -> Path | None:
        """The instance group `pid` is in, if it is one of ours."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            if line.startswith("0::"):
                path = self.mount / line[3:].lstrip("/")
                if path.parent == self.base:
                    return path
        return None

    def remove(self, group: Path) -> None:
        """Kill whatever is left in `group` (a daemon that left the process group), then delete it."""
        if group.parent != self.base or not group.is_dir():
            return
        if (group / "cgroup.kill").exists():  # Linux 5.14 and later
            with contextlib.suppress(OSError):
                (group / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 2.0
        while True:
            try:
                group.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.warning("could not remove cgroup %s: %s", group, exc.strerror)
                    return
                time.sleep(0.02)

    def _sweep(self, prefix: str) -> None:
        """Remove empty groups of this state (`prefix`) left by instances that died without a stop."""
        now = time.time()
        for group in self.base.glob(prefix + "*"):
            with contextlib.suppress(OSError):
                old = now - group.stat().st_mtime > _SWEEP_AGE_S
                if old and "populated 0" in (group / "cgroup.events").read_text():
                    group.rmdir()


def group_settings(resources: Resources, controllers: tuple[str, ...] = CONTROLLERS) -> dict[str, str]:
    """cgroup v2 files and values for the spec's `resources`: limits.memory -> memory.max (and no swap),
    limits.cpu -> cpu.max, and pids.max always. Requests are the scheduler's business on Kubernetes; here
    there is none, so they are not used. ephemeral-storage has no cgroup: not applied."""
    settings: dict[str, str] = {}
    if "pids" in controllers:
        settings["pids.max"] = str(_env_int(PIDS_ENV, PIDS))
    if "memory" in controllers and resources.memory_bytes is not None:
        settings["memory.max"] = str(resources.memory_bytes)
        settings["memory.swap.max"] = "0"
    if "cpu" in controllers and resources.nano_cpus is not None:
        quota = max(1000, resources.nano_cpus * CPU_PERIOD_US // 10**9)
        settings["cpu.max"] = f"{quota} {CPU_PERIOD_US}"
    return settings


def _mount_type(path: Path) -> str | None:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[1] == str(path):
            found = fields[2]  # the last mount on a path is the one that shows
    return found


# ---- what is weaker ------------------------------------------------------------------------------

_cgroups = Cgroups()


def cgroups() -> Cgroups:
    return _cgroups


def isolation() -> dict[str, Any]:
    """How instances are fenced on this machine, for `ingot status`."""
    support = _cgroups.support()
    return {"own_users": is_fenced(), "user": None if is_fenced() else _whoami(),
            "cgroup": {"usable": support.usable, "detail": support.detail}, "weaker": weaker()}


def weaker() -> list[str]:
    """What is weaker than the full fence here, in words (empty when nothing is)."""
    found = []
    if not is_fenced():
        found.append(not_root_warning())
    support = _cgroups.support()
    if not support.usable:
        found.append(f"cgroup v2 not usable ({support.detail}): resources are not applied to process instances")
    return found


def not_root_warning() -> str:
    return (f"ingot is not root: process instances run as its own user ({_whoami()}), not as users of their "
            "own, and can read its state, keys and each other's environments")


def deploy_warning(resources: Mapping[str, Any]) -> str | None:
    """The one line `ingot deploy` says when the instances it starts are fenced less than they could be."""
    if not is_fenced():
        return not_root_warning()
    support = _cgroups.support()
    if (resources.get("limits") or {}) and not support.usable:
        return f"resources.limits not applied: cgroup v2 is not usable here ({support.detail})"
    return None


def _whoami() -> str:
    return _user_name(os.geteuid())


def user_of(pid: int | None) -> str | None:
    """The user a process runs as (its real uid), by name where it has one."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return _user_name(int(line.split()[1]))
    except (OSError, ValueError, IndexError):
        return None
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
