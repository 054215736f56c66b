"""Fenced builds: what a build runs (pip, a requirement's setup.py) is untrusted code.

It runs in a private copy of the context, as an unprivileged user, with a clean environment:

- **the copy** is made by ingot into a fresh 0700 directory (`mkdtemp`, never a predictable path) by
  walking directory file descriptors with `O_NOFOLLOW`: a symlink is copied as a link, never followed, and
  a directory swapped for a symlink while the copy runs is copied as that symlink (then refused if it points
  out), never entered. A symlink that points out of the tree is refused, by name.
- **the user**: when ingot runs as root, the system user `ingot-build` (created on first use), in its own
  mount and PID namespaces (`unshare`), with `no_new_privs` (`setpriv`). The PID namespace ends every
  process the build started when it ends, so nothing the build left behind can change its output while
  ingot collects it. When ingot's interpreter sits below a directory others cannot enter (a pyenv in
  `/root`), that directory is covered by an empty tmpfs in the build's namespace and only the interpreter's
  own directories are mounted back, read-only: the build sees the interpreter, not root's home.
  When ingot is not root, the build runs as ingot's own user (it cannot switch users), still in the
  private copy and with the clean environment, in its own session, which is killed when pip exits.
- **the environment** is an allow-list (`build_env`): no operator variable (tokens, cloud credentials)
  reaches the build; only what pip needs to find packages.
- **the output** is copied back by the same no-follow walk into ingot's store; every entry must belong
  to the build user (a hard link to a file of someone else is refused) and no symlink may point out.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ingot.artifacts.digest import IgnoreFn, is_executable
from ingot.artifacts.store import force_rmtree
from ingot.diskspace import disk_full_error, is_disk_full, require_space
from ingot.errors import OperationFailed, UserInputError

BUILD_USER = "ingot-build"
_TAIL_LINES = 20
_SYMLINK_HOPS = 40  # as the kernel's MAXSYMLINKS: more is a loop
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
# What of the operator's environment a build may see. The package managers' settings for *where* packages come from
# (an index, a mirror, a proxy, a CA bundle) are needed to install at all on machines that use them; an
# index URL may carry a credential, which is then the operator's deliberate choice for builds. Nothing
# else passes: no tokens, no cloud credentials, no PYTHONPATH, no PIP_CONFIG_FILE (a file the operator
# keeps, maybe with credentials; /etc/pip.conf is still read).
PASSED_VARIABLES = (
    "LANG",
    "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_TRUSTED_HOST",
    "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES", "PIP_ONLY_BINARY", "PIP_PREFER_BINARY",
    "npm_config_registry", "NPM_CONFIG_REGISTRY", "npm_config_cafile", "NODE_EXTRA_CA_CERTS",
    "YARN_NPM_REGISTRY_SERVER", "UV_INDEX_URL", "GOPROXY",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "SOURCE_DATE_EPOCH",
)  # fmt: skip
_DEFAULTS = {"LANG": "C.UTF-8", "SOURCE_DATE_EPOCH": "315532800"}  # sdists embed timestamps otherwise

# Where each package manager keeps downloads, pointed into the dependency cache.
_CACHE_VARIABLES = {
    "XDG_CACHE_HOME": "xdg",  # pip, uv, poetry, pipenv, yarn 1 (under xdg/<tool>)
    "PIP_CACHE_DIR": "xdg/pip",
    "npm_config_cache": "npm",
    "YARN_CACHE_FOLDER": "yarn",
    "BUNDLE_USER_CACHE": "bundle",
    "GOMODCACHE": "go/mod",
    "GOCACHE": "go/build",
}

OutputFn = Callable[[str], None]
EntryHook = Callable[[str], None]


# --- copying without following symlinks ------------------------------------------------------------


def copy_tree(src: Path, dst: Path, *, ignore: IgnoreFn | None = None, owner: tuple[int, int] | None = None,
              require_uid: int | None = None, on_entry: EntryHook | None = None, what: str) -> None:
    """Copy the tree under `src` into the existing empty directory `dst`, never following a symlink.

    Every entry is opened relative to its parent's file descriptor with `O_NOFOLLOW`, and copied as what
    the opened descriptor is: so renaming or swapping anything in `src` meanwhile can change *which* of
    `src`'s own entries are copied, never make the copy read outside `src`. `owner` (uid, gid) is given
    to every entry made; `require_uid` refuses entries owned by anyone else. `on_entry(rel)` is called
    before each entry is looked at (tests change the tree there). Symlinks are copied as links: check
    them with `refuse_escaping_symlinks` on `dst` afterwards.
    """
    try:
        src_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise OperationFailed(f"{what} failed: cannot open {src}: {exc.strerror}") from exc
    try:
        dst_fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _Copier(ignore, owner, require_uid, on_entry, what, src).walk(src_fd, dst_fd, "")
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


@dataclass
class _Copier:
    ignore: IgnoreFn | None
    owner: tuple[int, int] | None
    require_uid: int | None
    on_entry: EntryHook | None
    what: str
    src: Path

    def walk(self, src_fd: int, dst_fd: int, prefix: str) -> None:
        for name in sorted(os.listdir(src_fd)):
            rel = prefix + name
            if self.on_entry is not None:
                self.on_entry(rel)
            try:
                self._entry(src_fd, dst_fd, name, rel)
            except OSError as exc:
                if is_disk_full(exc):
                    raise disk_full_error(exc, self.what) from exc
                raise OperationFailed(f"{self.what} failed: could not copy {rel} from {self.src}: "
                                      f"{exc.strerror or exc}") from exc

    def _entry(self, src_fd: int, dst_fd: int, name: str, rel: str) -> None:
        try:
            st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        except FileNotFoundError:
            return  # gone since it was listed: there is nothing to copy
        if self.ignore is not None and self.ignore(rel, stat.S_ISDIR(st.st_mode)):
            return
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise _unsupported(rel)  # never opened: opening a device or a FIFO can act or block
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                         dir_fd=src_fd)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            self._symlink(src_fd, dst_fd, name, rel)  # it is a symlink now, whatever it was when listed
            return
        try:
            st = os.fstat(fd)  # the entry as opened: this, not the path, is what gets copied
            self._check_owner(st, rel)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(name, 0o700, dir_fd=dst_fd)
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst_fd)
                try:
                    self.walk(fd, child, rel + "/")
                    self._own(child)
                    os.fchmod(child, 0o755)
                finally:
                    os.close(child)
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if is_executable(st.st_mode) else 0o644
                out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=dst_fd)
                try:
                    _copy_bytes(fd, out)
                    self._own(out)
                    os.fchmod(out, mode)
                finally:
                    os.close(out)
            else:
                raise _unsupported(rel)
        finally:
            os.close(fd)

    def _symlink(self, src_fd: int, dst_fd: int, name: str, rel: str) -> None:
        st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        self._check_owner(st, rel)
        os.symlink(os.readlink(name, dir_fd=src_fd), name, dir_fd=dst_fd)
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=dst_fd, follow_symlinks=False)

    def _check_owner(self, st: os.stat_result, rel: str) -> None:
        if self.require_uid is not None and st.st_uid != self.require_uid:
            raise OperationFailed(
                f"{self.what} failed: {rel} in the build's output does not belong to the build user "
                f"(owner uid {st.st_uid})",
                details=["a build can only produce its own files; a hard link to someone else's file is refused"],
            )

    def _own(self, fd: int) -> None:
        if self.owner is not None:
            os.fchown(fd, *self.owner)


def _copy_bytes(src: int, dst: int) -> None:
    while True:
        try:
            sent = os.sendfile(dst, src, None, 1 << 30)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            shutil.copyfileobj(os.fdopen(os.dup(src), "rb"), os.fdopen(os.dup(dst), "wb"))
            return
        if sent == 0:
            return


def _unsupported(rel: str) -> UserInputError:
    return UserInputError(f"unsupported file type at {rel}",
                          details=["only regular files, directories and symlinks can be part of an artifact"])


def escaping_symlinks(root: Path) -> list[tuple[str, str]]:
    """(relative path, target) of every symlink under `root` that resolves outside `root`.

    Resolved component by component inside the tree, following the tree's own links, as the kernel would
    from a copy of the tree anywhere: an absolute target always points out (at the host, not the copy).
    `root` must be a tree nobody else changes meanwhile (a copy ingot just made).
    """
    found: list[tuple[str, str]] = []
    for current, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(current, name)
            if os.path.islink(path):
                rel = os.path.relpath(path, root)
                target = os.readlink(path)
                if _points_out(root, rel, target):
                    found.append((Path(rel).as_posix(), target))
    return sorted(found)


def _points_out(root: Path, rel: str, target: str) -> bool:
    if os.path.isabs(target):
        return True
    resolved = list(Path(rel).parts[:-1])
    pending = target.split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return True
            resolved.pop()
            continue
        resolved.append(part)
        path = root.joinpath(*resolved)
        if path.is_symlink():
            hops += 1
            inner = os.readlink(path)
            if hops > _SYMLINK_HOPS or os.path.isabs(inner):
                return True
            resolved.pop()
            pending = inner.split("/") + pending
    return False


def refuse_escaping_symlinks(root: Path, make_error: Callable[[str, str], Exception]) -> None:
    """Raise `make_error(rel, target)` for the first symlink under `root` that points out of it."""
    for rel, target in escaping_symlinks(root):
        raise make_error(rel, target)


# --- the build's sandbox ---------------------------------------------------------------------------


@dataclass
class BuildSandbox:
    """A private place for one build: `src` (the copy, the build's cwd), `home` and `tmp`."""

    top: Path
    src: Path
    home: Path
    tmp: Path
    user: tuple[int, int] | None  # (uid, gid); None: ingot is not root, the build runs as ingot's own user
    # A dependency cache outside the sandbox (`ingot.artifacts.caches`), seen by the build at `cache_path`
    # (bound there in the build's own mount namespace, as root; used where it is otherwise).
    cache: Path | None = None
    extra_env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def cache_path(self) -> Path | None:
        if self.cache is None:
            return None
        return self.top / "work" / "cache" if self.user is not None else self.cache

    @property
    def owner(self) -> tuple[int, int] | None:
        return self.user

    @property
    def uid(self) -> int:
        return self.user[0] if self.user is not None else os.getuid()

    def env(self, python: str) -> dict[str, str]:
        return build_env(os.environ, python=python, home=self.home, tmp=self.tmp, cache=self.cache_path,
                         extra=self.extra_env)

    def with_cache(self, cache: Path, extra_env: Mapping[str, str]) -> BuildSandbox:
        """This sandbox with a dependency cache (and the spec's build variables)."""
        if self.user is not None:
            (self.top / "work" / "cache").mkdir(mode=0o700, exist_ok=True)
            os.chown(self.top / "work" / "cache", *self.user)
        return dataclasses.replace(self, cache=cache, extra_env=dict(extra_env))

    def command(self, argv: Sequence[str], python: str) -> list[str]:
        """`argv` as it runs fenced: as the build user in its own namespaces when root, as is otherwise."""
        if self.user is None:
            return list(argv)
        unshare, setpriv = _tool("unshare"), _tool("setpriv")
        binds: list[str] = []
        covers: list[str] = []
        moves: list[str] = []
        for index, (cover, exposed) in enumerate(_covers(_interpreter_dirs(python))):
            if self.top.is_relative_to(cover):
                raise OperationFailed(f"cannot fence the build: its directory {self.top} is inside {cover}, "
                                      "which the build user cannot enter", details=["set TMPDIR elsewhere"])
            covers.append(f"mount -t tmpfs -o mode=0755,size=1m,nosuid,nodev ingot-hidden {shlex.quote(cover)}")
            for number, path in enumerate(exposed):
                point = self.top / "mnt" / f"{index}-{number}"
                point.mkdir(parents=True, mode=0o700, exist_ok=True)  # one sandbox runs several steps
                # Bound aside first: once the cover is mounted, the path itself is hidden from us too.
                binds += [f"mount --bind {shlex.quote(path)} {shlex.quote(str(point))}",
                          f"mount -o remount,bind,ro,nosuid,nodev {shlex.quote(str(point))}"]
                moves += [f"mkdir -p {shlex.quote(path)}",
                          f"mount --move {shlex.quote(str(point))} {shlex.quote(path)}"]
        # The directories made in a cover lead the build user to the interpreter: open to pass through,
        # whatever ingot's own umask (077).
        if self.cache is not None and self.cache_path is not None:
            # Bound before the covers: the cache may sit below one (a state dir in /root).
            binds.insert(0, f"mount --bind {shlex.quote(str(self.cache))} {shlex.quote(str(self.cache_path))}")
        script = ["set -e", *binds, *covers, "umask 022", *moves, "umask 077"]
        script.append(f'exec {shlex.quote(setpriv)} --reuid={self.uid} --regid={self.user[1]} '
                      '--clear-groups --no-new-privs -- "$@"')
        return [unshare, "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
                "--mount-proc", "--", "/bin/sh", "-c", "\n".join(script), "ingot-build", *argv]

    def run(self, argv: Sequence[str], python: str, on_output: OutputFn) -> tuple[int, list[str]]:
        """Run `argv` fenced in `src`; its exit code and last lines of output."""
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        with subprocess.Popen(
            self.command(argv, python), cwd=self.src, env=self.env(python), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
            start_new_session=True,
        ) as proc:  # fmt: skip
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    line = raw.rstrip("\r\n")
                    tail.append(line)
                    on_output(line)
                returncode = proc.wait()
            finally:
                # Whatever the build started and left running goes with it (as root the PID namespace
                # has already ended them; a process that left the session is the non-root weakness).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        return returncode, list(tail)


@contextlib.contextmanager
def build_sandbox(size: int, what: str) -> Iterator[BuildSandbox]:
    """A fresh sandbox with room for `size` bytes of context; deleted, whatever the build left, on exit."""
    user = _build_user()
    top = Path(tempfile.mkdtemp(prefix="ingot-build-"))  # 0700, a name nobody can guess
    try:
        require_space(top.parent, size, what)
        work = top / "work"
        dirs = [work, work / "src", work / "home", work / "tmp"]
        for path in dirs:
            path.mkdir(mode=0o700)
        if user is not None:
            # The top stays root's (only traversable): the build user owns its work dir, not the mount points.
            top.chmod(0o711)
            for path in dirs:
                os.chown(path, *user, follow_symlinks=False)
        yield BuildSandbox(top=top, src=work / "src", home=work / "home", tmp=work / "tmp", user=user)
    finally:
        force_rmtree(top)


def build_env(environ: Mapping[str, str], *, python: str, home: Path, tmp: Path, cache: Path | None = None,
              extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a build: an allow-list, never the operator's other variables.

    `cache`: where package managers keep their downloads (see `ingot.artifacts.caches`); without one,
    nothing is cached (the home is thrown away after the build). `extra`: the spec's `build.env`.
    """
    env = {name: environ[name] for name in PASSED_VARIABLES if environ.get(name)}
    for name, value in _DEFAULTS.items():
        env.setdefault(name, value)
    env.update(
        PATH=os.path.dirname(os.path.abspath(python)) + ":" + _SYSTEM_PATH,
        PIP_NO_INPUT="1",  # never wait for a prompt nobody will answer
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PYTHONNOUSERSITE="1",
        PYTHONUNBUFFERED="1",  # lines reach on_output as pip prints them, not in 8 KiB blocks
        PYTHONDONTWRITEBYTECODE="1",
        # npm: no calls home that a build does not need (an audit, a version check), none that can hang.
        npm_config_audit="false", npm_config_fund="false", npm_config_update_notifier="false",
    )  # fmt: skip
    if cache is None:
        env["PIP_NO_CACHE_DIR"] = "1"
    else:
        env.update({name: str(cache / sub) for name, sub in _CACHE_VARIABLES.items()})
    env.update(extra or {})
    env.update(HOME=str(home), TMPDIR=str(tmp))  # the sandbox's, whatever the spec says
    return env


def _build_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    from ingot.sysusers import ensure_system_user

    return ensure_system_user(BUILD_USER, comment="ingot builds")


def _tool(name: str) -> str:
    found = shutil.which(name, path=_SYSTEM_PATH + ":/usr/sbin:/sbin")
    if found is None:
        raise OperationFailed(f"cannot fence the build: `{name}` is not installed",
                              details=["it comes with util-linux (Debian: apt-get install util-linux)"])
    return found


def _interpreter_dirs(python: str) -> list[str]:
    """The directories the build user must reach to run `python`: its prefixes and its executable's dir."""
    if python == sys.executable:
        paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                 os.path.dirname(os.path.realpath(sys.executable))}
    else:
        script = ("import os, sys; print(sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, "
                  "os.path.dirname(os.path.realpath(sys.executable)), sep='\\n')")
        done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=60, check=False)
        paths = {line for line in done.stdout.splitlines() if line.startswith("/")}
    return sorted(os.path.realpath(p) for p in paths)


def _covers(paths: list[str]) -> list[tuple[str, list[str]]]:
    """(directory others cannot enter, [paths below it to mount back]) for the paths behind one."""
    # Only the outermost of nested paths is mounted back: it brings the inner ones along.
    outermost = [p for p in paths if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths)]
    groups: dict[str, list[str]] = {}
    for path in outermost:
        blocker = _first_closed_dir(path)
        if blocker is not None:
            groups.setdefault(blocker, []).append(path)
    return sorted(groups.items())


def _first_closed_dir(path: str) -> str | None:
    """The topmost directory on the way to `path` (itself excluded) that others cannot traverse."""
    current = Path("/")
    for part in Path(path).parts[1:-1]:
        current = current / part
        try:
            st = os.stat(current)
        except OSError:
            return None
        if not st.st_mode & stat.S_IXOTH:
            return str(current)
    return None
