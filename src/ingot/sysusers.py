"""System users for what ingot runs unprivileged (service instances, builds), created on first use.

`ensure_system_user(name)` returns the (uid, gid) of a system user, making it with `useradd --system
--user-group --no-create-home --shell /usr/sbin/nologin` when it does not exist yet: no password, no
login shell, no home, a private group of its own with no other member. Only root can make one;
whoever calls must check that first (`is_root()`). Two ingot processes making the same user at once
is fine: the one that loses the race finds the other's.

`user_name(*parts)` names such a user deterministically within the 32 characters useradd allows:
`ingot-<readable part>-<hash8>`. The hash is over the parts themselves, so that project `a-b` with
service `c` and project `a` with service `b-c` never share a user, while the readable part tells a
person which service a process belongs to (`ps -o user`).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
import threading
import time

from ingot.errors import OperationFailed

PREFIX = "ingot-"
MAX_NAME = 32  # useradd's limit on Linux
NOLOGIN = "/usr/sbin/nologin"
NO_HOME = "/nonexistent"  # Debian's convention for system users without a home
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SBIN_PATH = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
_LOCK_RETRY_S = 10.0  # another useradd (or vipw) holding /etc/passwd's lock


def is_root() -> bool:
    return os.geteuid() == 0


def user_name(*parts: str) -> str:
    """`ingot-<slug>-<hash8>`: one name per `parts` (e.g. project and service), at most 32 characters."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    room = MAX_NAME - len(PREFIX) - len(digest) - 1
    slug = slug[:room].rstrip("-")
    return f"{PREFIX}{slug}-{digest}" if slug else f"{PREFIX}{digest}"


def lookup(name: str) -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


# The replicas of a first deploy start in threads, each making sure its user exists: one makes it while the
# others wait. Two useradds at once for one name left a replica of an npm app unable to read its checkout
# (EACCES on package.json) on the first deploy of a service, every time.
_CREATING = threading.Lock()


def ensure_system_user(name: str, comment: str = "ingot") -> tuple[int, int]:
    """The (uid, gid) of system user `name`, created now if it does not exist (root only)."""
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid user name")
    with _CREATING:
        found = lookup(name)
        if found is None:
            found = _create(name, comment)
    if found[0] == 0 or found[1] == 0:
        raise OperationFailed(f"user {name} exists with uid or gid 0 (root); ingot will not run anything as it",
                              details=[f"remove it (userdel {name}) and let ingot create it again"])
    return found


def _create(name: str, comment: str) -> tuple[int, int]:
    useradd = shutil.which("useradd") or ("/usr/sbin/useradd" if os.path.exists("/usr/sbin/useradd") else None)
    if useradd is None:
        raise OperationFailed(f"cannot create the system user {name}: useradd is not installed",
                              details=["install the passwd package (Debian, Ubuntu) or shadow-utils"])
    shell = NOLOGIN if os.path.exists(NOLOGIN) else "/bin/false"
    command = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", NO_HOME,
               "--shell", shell, "--comment", comment, name]
    deadline = time.monotonic() + _LOCK_RETRY_S
    while True:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_SBIN_PATH)
        found = lookup(name)
        if found is not None:  # made now, or by another process meanwhile (useradd then exits 9)
            return found
        # Exit 1 or 10: /etc/passwd or /etc/group was locked by someone else; try again shortly.
        if proc.returncode not in (1, 10) or time.monotonic() > deadline:
            raise OperationFailed(f"cannot create the system user {name}: useradd exited {proc.returncode}",
                                  details=proc.stderr.strip().splitlines()[-3:])
        time.sleep(0.1)


def remove_system_user(name: str) -> bool:
    """Delete system user `name` (and its private group); False if it did not exist. For clean-ups."""
    if lookup(name) is None:
        return False
    subprocess.run(["userdel", name], capture_output=True, timeout=60, env=_SBIN_PATH, check=False)
    return lookup(name) is None
