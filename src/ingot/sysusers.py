"""System users that ingot runs untrusted code as (builds, instances), created on first use.

Only root can create users; callers decide what to do when ingot is not root (run as ingot's own user).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

from ingot.errors import OperationFailed

NOLOGIN = "/usr/sbin/nologin"


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """The system user `name` (with a group of the same name), created if it does not exist yet.

    The user has no home directory and no login shell: whatever runs as it gets a private home from
    its caller. Two ingot processes creating the same user at once is fine: the loser finds the user.
    """
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    cmd = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
           "--shell", NOLOGIN if os.path.exists(NOLOGIN) else "/bin/false", name]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationFailed(f"cannot create system user {name}: {exc}") from exc
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise OperationFailed(
            f"cannot create system user {name} (useradd exit code {done.returncode})",
            details=[line for line in done.stderr.splitlines() if line.strip()][-5:],
        ) from None
