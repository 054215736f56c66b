"""Builds of a service's context into a stored artifact, for the process runtime.

The artifact is the context (filtered by `.ingotignore`) plus, if the context has a
`requirements.txt`, those requirements installed by pip into `<artifact>/.ingot-deps`.

Builds are cached by an input key: the context's tree digest and the target interpreter. An
unchanged context is therefore never rebuilt, which also means unpinned requirements stay at the
versions of the first build until the context changes: pin them.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from ingot.artifacts.digest import DIGEST_PREFIX, file_listing, is_executable, listing_digest
from ingot.artifacts.ignore import IgnoreRules
from ingot.artifacts.store import ArtifactCorrupt, ArtifactStore, force_rmtree
from ingot.diskspace import disk_full_error, is_disk_full, require_space
from ingot.errors import OperationFailed, UserInputError

DEPS_DIR = ".ingot-deps"
REQUIREMENTS = "requirements.txt"
_PIP_TAIL_LINES = 20
# Bump when the build recipe changes in a way that changes outputs, so old cache entries miss.
_RECIPE = "ingot-process-build-v1"
# Files pip writes into *.dist-info that vary between identical installs (paths, installer, hashes of
# files we delete) and that nothing at run time needs.
_PIP_VOLATILE = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")

OutputFn = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    digest: str
    input_key: str
    reused: bool
    path: Path
    deps_installed: int
    # The cached artifact was found damaged and rebuilt: what was wrong with it.
    replaced_corrupt: tuple[str, ...] = ()


def build_artifact(
    store: ArtifactStore,
    context: Path,
    *,
    on_output: OutputFn | None = None,
    python: str = sys.executable,
    exclude: Iterable[str] = (),
    rebuild: bool = False,
) -> BuildResult:
    """Build `context` into `store`, or reuse the artifact already built from the same input.

    A cached artifact is verified before it is reused: a damaged one is rebuilt and replaced, never
    reused. `rebuild` builds afresh whatever the cache holds. `exclude` adds ignore patterns on top of
    `.ingotignore` (the spec file, for one).
    """
    if not context.is_dir():
        raise UserInputError(f"build context {context} does not exist or is not a directory")
    listing = file_listing(context, ignore=IgnoreRules.from_context(context, exclude).is_ignored)
    key = input_key(listing_digest(listing), interpreter_tag(python))

    cached = store.lookup_input(key)
    corrupt: tuple[str, ...] = ()
    if cached is not None and store.has(cached) and not rebuild:
        try:
            store.verify(cached)
        except ArtifactCorrupt as exc:
            corrupt = (exc.message, *exc.details)
        else:
            return _result(store, cached, key, reused=True)

    require_space(store.tmp_dir, _listed_size(context, listing), f"the build of {context}")
    staging = store.new_staging_dir()
    try:
        _copy_entries(context, staging, listing)
        if REQUIREMENTS in listing:
            _pip_install(python, staging, on_output or (lambda _line: None))
        _normalise(staging)
        digest = store.put_tree(staging)
    finally:
        if staging.exists():
            force_rmtree(staging)
    store.record_input(key, digest)
    return replace(_result(store, digest, key, reused=False), replaced_corrupt=corrupt)


def _listed_size(context: Path, listing: dict[str, str]) -> int:
    total = 0
    for rel in listing:
        path = context / rel
        if not path.is_symlink() and path.is_file():
            total += path.stat().st_size
    return total


def cached_build(store: ArtifactStore, context: Path, python: str = sys.executable,
                 exclude: Iterable[str] = ()) -> str | None:
    """The digest an unchanged `context` already built to, or None if a build is needed."""
    if not context.is_dir():
        return None
    listing = file_listing(context, ignore=IgnoreRules.from_context(context, exclude).is_ignored)
    cached = store.lookup_input(input_key(listing_digest(listing), interpreter_tag(python)))
    return cached if cached is not None and store.has(cached) else None


def deps_dir(artifact_path: Path) -> Path | None:
    """The directory to put on PYTHONPATH when running the artifact, if it has installed deps."""
    path = artifact_path / DEPS_DIR
    return path if path.is_dir() else None


def input_key(context_digest: str, interpreter: str) -> str:
    """The build cache key of a context digest built for an interpreter tag."""
    h = hashlib.sha256("\0".join((_RECIPE, context_digest, interpreter)).encode())
    return DIGEST_PREFIX + h.hexdigest()


def interpreter_tag(python: str) -> str:
    """`<implementation>-<major.minor><abiflags>-<platform>`, e.g. `cpython-3.11-linux-x86_64`.

    Installed wheels depend on exactly these, so a change of any must miss the build cache.
    """
    if python == sys.executable:
        return _local_interpreter_tag()
    try:
        proc = subprocess.run(
            [python, "-c", _TAG_SCRIPT], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserInputError(f"cannot run python interpreter {python!r}: {exc}") from exc
    if proc.returncode != 0:
        raise UserInputError(
            f"python interpreter {python!r} failed to report its version",
            details=proc.stderr.splitlines()[-_PIP_TAIL_LINES:],
        )
    return proc.stdout.strip()


_TAG_SCRIPT = (
    "import sys, sysconfig; v = sys.version_info; "
    "print(sys.implementation.name, f'{v[0]}.{v[1]}' + getattr(sys, 'abiflags', ''), "
    "sysconfig.get_platform(), sep='-')"
)


def _local_interpreter_tag() -> str:
    # Same as _TAG_SCRIPT, without starting a process for the common case of our own interpreter.
    major, minor = sys.version_info[:2]
    abiflags = getattr(sys, "abiflags", "")
    return f"{sys.implementation.name}-{major}.{minor}{abiflags}-{sysconfig.get_platform()}"


def _result(store: ArtifactStore, digest: str, key: str, *, reused: bool) -> BuildResult:
    path = store.path_for(digest)
    deps = deps_dir(path)
    count = sum(1 for p in deps.iterdir() if p.name.endswith(".dist-info")) if deps else 0
    return BuildResult(digest=digest, input_key=key, reused=reused, path=path, deps_installed=count)


def _copy_entries(context: Path, staging: Path, listing: dict[str, str]) -> None:
    # Copy exactly the listed entries (sorted, so parents come before children): what is built is
    # then what was hashed into the input key, barring a context edited mid-build.
    for rel in listing:
        src, dst = context / rel, staging / rel
        try:
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            elif src.is_dir():
                dst.mkdir()
            else:
                shutil.copyfile(src, dst)
                dst.chmod(0o755 if is_executable(src.stat().st_mode) else 0o644)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(exc, f"the build of {context}") from exc
            raise OperationFailed(f"build failed: could not copy {rel} from {context}: {exc}") from exc


def _pip_install(python: str, staging: Path, on_output: OutputFn) -> None:
    cmd = [
        python, "-m", "pip", "install",
        "--no-compile", "--disable-pip-version-check", "--no-warn-script-location",
        "--target", str(staging / DEPS_DIR),
        "-r", REQUIREMENTS,
    ]  # fmt: skip
    tail: collections.deque[str] = collections.deque(maxlen=_PIP_TAIL_LINES)
    try:
        # cwd is the staged copy, so relative paths in requirements.txt resolve within the input.
        with subprocess.Popen(
            cmd, cwd=staging, env=_pip_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
        ) as proc:  # fmt: skip
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\r\n")
                tail.append(line)
                on_output(line)
            returncode = proc.wait()
    except OSError as exc:
        raise UserInputError(f"cannot run python interpreter {python!r}: {exc}") from exc
    if returncode != 0:
        raise OperationFailed(
            f"build failed: pip could not install {REQUIREMENTS} (exit code {returncode})", details=list(tail)
        )


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    # These would contradict --target (pip refuses --user with --target) or redirect the install.
    for name in ("PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT"):
        env.pop(name, None)
    env.update(
        PIP_NO_INPUT="1",  # never wait for a prompt nobody will answer
        PIP_ROOT_USER_ACTION="ignore",  # the root warning is about site-packages; --target is ours
        PYTHONUNBUFFERED="1",  # lines reach on_output as pip prints them, not in 8 KiB blocks
        PYTHONDONTWRITEBYTECODE="1",
    )
    # Sdists built on the way embed timestamps unless told otherwise.
    env.setdefault("SOURCE_DATE_EPOCH", "315532800")
    return env


def _normalise(staging: Path) -> None:
    """Drop what differs between identical builds: bytecode and pip's per-install records."""
    for current, dirnames, filenames in os.walk(staging):
        if "__pycache__" in dirnames:
            dirnames.remove("__pycache__")
            force_rmtree(Path(current, "__pycache__"))
        for name in filenames:
            if name.endswith(".pyc"):
                os.unlink(os.path.join(current, name))
    deps = staging / DEPS_DIR
    if deps.is_dir():
        for dist_info in deps.glob("*.dist-info"):
            for name in _PIP_VOLATILE:
                (dist_info / name).unlink(missing_ok=True)
