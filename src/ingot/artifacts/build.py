"""Builds of a service's context into a stored artifact, for the process runtime.

Two recipes. The plain one (`build: DIR`): the artifact is the context (filtered by `.ingotignore`)
plus, if the context has a `requirements.txt`, those requirements installed by pip into
`<artifact>/.ingot-deps`. With steps (`build: {run: [[npm, ci], [npm, run, build]]}`): each step runs
in turn, fenced, in a private copy of the context, and what they leave in the copy is the artifact
(any language: the steps bring their own tools).

Builds are cached by an input key: the context's tree digest and the recipe (the target interpreter,
or the steps and their variables). An unchanged context is therefore never rebuilt, which also means
unpinned requirements stay at the versions of the first build until the context changes: pin them.
A changed context with unchanged lockfiles installs from the dependency cache (`ingot.artifacts.caches`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ingot.artifacts import caches
from ingot.artifacts.digest import DIGEST_PREFIX, IgnoreFn, file_listing, listing_digest
from ingot.artifacts.fence import BuildSandbox, EntryHook, build_sandbox, copy_tree, refuse_escaping_symlinks
from ingot.artifacts.ignore import IgnoreRules
from ingot.artifacts.store import ArtifactCorrupt, ArtifactStore, force_rmtree
from ingot.diskspace import require_space
from ingot.errors import OperationFailed, UserInputError

DEPS_DIR = ".ingot-deps"
REQUIREMENTS = "requirements.txt"
_PIP_TAIL_LINES = 20
_PATH_HINT = "/usr/local/bin:/usr/bin:/bin and the directory of ingot's python"
# Bump when the build recipe changes in a way that changes outputs, so old cache entries miss.
_RECIPE = "ingot-process-build-v1"
_STEPS_RECIPE = "ingot-steps-build-v1"
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
    # The dependency cache the build used (keyed by the lockfiles' digest), and whether it was complete.
    deps_cache: str | None = None
    deps_cache_hit: bool = False


@dataclass(frozen=True)
class BuildSteps:
    """`build.run` and `build.env` of a spec: the commands that make the artifact, and their variables."""

    run: tuple[tuple[str, ...], ...] = ()
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, run: Sequence[Sequence[str]], env: Mapping[str, str]) -> BuildSteps:
        return cls(tuple(tuple(step) for step in run), dict(env))

    def tag(self) -> str:
        """What of the recipe enters the input key: the steps and variables, canonically."""
        return _STEPS_RECIPE + json.dumps({"run": self.run, "env": dict(sorted(self.env.items()))},
                                          separators=(",", ":"))


def build_artifact(
    store: ArtifactStore,
    context: Path,
    *,
    on_output: OutputFn | None = None,
    python: str = sys.executable,
    exclude: Iterable[str] = (),
    rebuild: bool = False,
    on_entry: EntryHook | None = None,
    steps: BuildSteps | None = None,
    cache_name: str | None = None,
) -> BuildResult:
    """Build `context` into `store`, or reuse the artifact already built from the same input.

    A cached artifact is verified before it is reused: a damaged one is rebuilt and replaced, never
    reused. `rebuild` builds afresh whatever the cache holds. `exclude` adds ignore patterns on top of
    `.ingotignore` (the spec file, for one). `on_entry(rel)` is called as each entry is copied (for tests).
    `steps`: the build's own commands instead of the plain recipe. `cache_name` (the service): keep
    package managers' downloads between builds, keyed by the context's lockfiles.

    See `ingot.artifacts.fence` for how the build is fenced.
    """
    if not context.is_dir():
        raise UserInputError(f"build context {context} does not exist or is not a directory")
    listing = file_listing(context, ignore=IgnoreRules.from_context(context, exclude).is_ignored)
    key = input_key(listing_digest(listing), _recipe_tag(python, steps))

    cached = store.lookup_input(key)
    corrupt: tuple[str, ...] = ()
    if cached is not None and store.has(cached) and not rebuild:
        try:
            store.verify(cached)
        except ArtifactCorrupt as exc:
            corrupt = (exc.message, *exc.details)
        else:
            return _result(store, cached, key, reused=True)

    size = _listed_size(context, listing)
    require_space(store.tmp_dir, size, f"the build of {context}")
    what = f"the build of {context}"
    cache: caches.DepsCache | None = None
    if steps is None and REQUIREMENTS not in listing:
        # Nothing to install, so no untrusted code runs: the context is copied straight into the store.
        digest = _store_copy(store, context, context, listing=listing, on_entry=on_entry, what=what)
    else:
        emit = on_output or (lambda _line: None)
        with build_sandbox(size, what) as box:
            lock_key = caches.lockfile_key(listing) if cache_name is not None else None
            if lock_key is not None and cache_name is not None:
                cache = caches.open_cache(store.root / "caches", cache_name, lock_key, box.owner)
                box = box.with_cache(cache.data, {**cache.hints(), **(steps.env if steps is not None else {})})
                emit(f"ingot: dependency cache {'hit' if cache.hit else 'miss'} (lockfiles {lock_key[7:19]})")
            elif steps is not None:
                box = dataclasses.replace(box, extra_env=dict(steps.env))
            # The private copy: exactly the listed entries (what was hashed into the input key), never
            # following a symlink; one that points out of the context is refused before anything runs.
            copy_tree(context, box.src, ignore=_only(listing), owner=box.owner, on_entry=on_entry, what=what)
            refuse_escaping_symlinks(box.src, lambda rel, target: _escaping_link(context, rel, target))
            if steps is None:
                _pip_install(box, python, emit)
            else:
                _run_steps(box, steps, python, emit)
            # The build's output comes back the same way: its own files only, its links kept inside.
            digest = _store_copy(store, box.src, context, require_uid=box.uid, what=what)
        if cache is not None and cache_name is not None:
            cache.mark_ready()
            caches.prune(store.root / "caches", cache_name)
    store.record_input(key, digest)
    return replace(_result(store, digest, key, reused=False), replaced_corrupt=corrupt,
                   deps_cache=cache.key if cache is not None else None,
                   deps_cache_hit=cache.hit if cache is not None else False)


def _recipe_tag(python: str, steps: BuildSteps | None) -> str:
    # The plain recipe installs wheels for the interpreter; steps bring their own tools.
    return steps.tag() if steps is not None else interpreter_tag(python)


def _run_steps(box: BuildSandbox, steps: BuildSteps, python: str, on_output: OutputFn) -> None:
    for number, step in enumerate(steps.run, start=1):
        shown = shlex.join(step)
        on_output(f"ingot: step {number}/{len(steps.run)}: {shown}")
        try:
            returncode, tail = box.run(step, python, on_output)
        except (FileNotFoundError, PermissionError) as exc:  # not root: the program is started directly
            raise OperationFailed(f"build failed: step {number} ({shown}) could not start: {exc.strerror or exc}",
                                  details=["the build sees only the system's PATH: " + _PATH_HINT]) from exc
        if returncode != 0:
            raise OperationFailed(
                f"build failed: step {number} of {len(steps.run)} ({shown}) exited with code {returncode}",
                details=[*tail, f"the step: {shown}"],
            )


def _only(listing: dict[str, str]) -> IgnoreFn:
    return lambda rel, _is_dir: rel not in listing


def _store_copy(store: ArtifactStore, source: Path, context: Path, *, listing: dict[str, str] | None = None,
                require_uid: int | None = None, on_entry: EntryHook | None = None, what: str) -> str:
    """Copy `source` (no-follow) into a staging dir, check its symlinks, normalise, store; the digest."""
    staging = store.new_staging_dir()
    try:
        copy_tree(source, staging, ignore=_only(listing) if listing is not None else None,
                  require_uid=require_uid, on_entry=on_entry, what=what)
        if listing is not None:  # the context itself: a bad link is bad input
            refuse_escaping_symlinks(staging, lambda rel, target: _escaping_link(context, rel, target))
        else:  # what the build made of it
            refuse_escaping_symlinks(staging, _escaping_output)
        _normalise(staging)
        return store.put_tree(staging)
    finally:
        if staging.exists():
            force_rmtree(staging)


def _listed_size(context: Path, listing: dict[str, str]) -> int:
    total = 0
    for rel in listing:
        path = context / rel
        if not path.is_symlink() and path.is_file():
            total += path.stat().st_size
    return total


def cached_build(store: ArtifactStore, context: Path, python: str = sys.executable,
                 exclude: Iterable[str] = (), steps: BuildSteps | None = None) -> str | None:
    """The digest an unchanged `context` already built to, or None if a build is needed."""
    if not context.is_dir():
        return None
    cached = store.lookup_input(context_input_key(context, python, exclude, steps))
    return cached if cached is not None and store.has(cached) else None


# How a context is listed: (root, ignore, a name for `ignore`) -> the listing (`TreeCache.listing`).
Lister = Callable[[Path, IgnoreFn, str], dict[str, str]]


def context_input_key(context: Path, python: str = sys.executable, exclude: Iterable[str] = (),
                      steps: BuildSteps | None = None, lister: Lister | None = None) -> str:
    """The build cache key of `context`, as `build_artifact` computes it; `lister`: how the context is
    listed (default: hashed in full; a `TreeCache`'s re-hashes it only when its stat fingerprint moved)."""
    rules = IgnoreRules.from_context(context, exclude)
    listing = (file_listing(context, ignore=rules.is_ignored) if lister is None
               else lister(context, rules.is_ignored, "\n".join(rules.patterns)))
    return input_key(listing_digest(listing), _recipe_tag(python, steps))


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


def _escaping_link(context: Path, rel: str, target: str) -> UserInputError:
    return UserInputError(
        f"{context / rel}: a symlink pointing out of the build context ({rel} -> {target})",
        details=["a build copies only its context: copy the file in, or point the link at a path inside it"],
    )


def _escaping_output(rel: str, target: str) -> OperationFailed:
    return OperationFailed(f"build failed: the build made {rel}, a symlink pointing out of the artifact "
                           f"(-> {target})")


def _pip_install(box: BuildSandbox, python: str, on_output: OutputFn) -> None:
    cmd = [
        python, "-m", "pip", "install",
        "--no-compile", "--disable-pip-version-check", "--no-warn-script-location",
        "--target", str(box.src / DEPS_DIR),
        "-r", REQUIREMENTS,
    ]  # fmt: skip
    try:
        # cwd is the private copy, so relative paths in requirements.txt resolve within the input.
        returncode, tail = box.run(cmd, python, on_output)
    except OSError as exc:
        raise UserInputError(f"cannot run python interpreter {python!r}: {exc}") from exc
    if returncode != 0:
        raise OperationFailed(
            f"build failed: pip could not install {REQUIREMENTS} (exit code {returncode})", details=tail
        )


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
