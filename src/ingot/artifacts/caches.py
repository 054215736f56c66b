"""Dependency caches for builds, keyed by the digest of the context's lockfiles.

A build's package managers (npm, pip, yarn, uv, poetry, bundler, go) download into one directory that
outlives the build: `<store>/caches/<service>/<key>/data`, where the key digests the lockfiles at the
context's top (`package-lock.json`, `requirements.txt`, ...). With the same lockfiles the next build
finds every package it needs there, so it installs nothing from the network; a changed lockfile gets a
new directory, seeded from the newest one of that service (only what changed is downloaded). The
cache is the build user's: what one build of a service leaves there only ever reaches later builds of
that same service (as untrusted as the build itself, never the artifact's digest, which covers what
the build produced, not where its packages came from).

The directory is complete (`ready`) once a build with it has succeeded: that is the cache hit ingot
records. Only the newest `KEEP` caches of a service are kept.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ingot.artifacts.digest import DIGEST_PREFIX
from ingot.artifacts.fence import copy_tree
from ingot.artifacts.store import force_rmtree

# At the context's top: what pins a project's dependencies, by package manager.
LOCKFILES = (
    "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lockb",
    "requirements.txt", "poetry.lock", "uv.lock", "Pipfile.lock", "pdm.lock",
    "Gemfile.lock", "go.sum", "Cargo.lock", "composer.lock", "mix.lock",
)  # fmt: skip
KEEP = 3
_READY = "ready"


@dataclass(frozen=True)
class DepsCache:
    """One service's cache for one set of lockfiles: `data` is what the build sees."""

    key: str
    top: Path
    hit: bool  # a build with exactly these lockfiles succeeded before: everything it needs is here

    @property
    def data(self) -> Path:
        return self.top / "data"

    def hints(self) -> dict[str, str]:
        """Variables for a build with this cache: on a hit, package managers need not ask the registry
        whether what they hold is current (the lockfile says exactly what is wanted, and it is all here)."""
        return {"npm_config_prefer_offline": "true"} if self.hit else {}

    def mark_ready(self) -> None:
        (self.top / _READY).touch()


def lockfile_key(listing: dict[str, str]) -> str | None:
    """The digest of the lockfiles among a context's listed entries; None when it has none."""
    found = [(name, listing[name]) for name in LOCKFILES if name in listing]
    if not found:
        return None
    h = hashlib.sha256(b"ingot-deps-cache-v1\n")
    for name, digest in found:
        h.update(f"{name}\0{digest}\n".encode())
    return DIGEST_PREFIX + h.hexdigest()


def open_cache(root: Path, service: str, key: str, owner: tuple[int, int] | None) -> DepsCache:
    """The cache for `key`, made (seeded from the service's newest complete cache) if it is new."""
    top = root / service / key.removeprefix(DIGEST_PREFIX)
    if (top / "data").is_dir():
        # Not ready: a build with it failed, was interrupted, or runs now (another environment's deploy).
        # Its downloads are as good as any (package managers check them against the lockfile's hashes), so
        # it is used as it is, never swept from under a build still using it.
        return DepsCache(key, top, hit=(top / _READY).is_file())
    if top.exists():
        force_rmtree(top)  # made, but not its data: nothing in it to keep
    top.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    top.mkdir(mode=0o700, exist_ok=True)
    data = top / "data"
    try:
        data.mkdir(mode=0o700)
    except FileExistsError:
        return DepsCache(key, top, hit=False)  # another build of the service made it meanwhile
    seed = _newest(root / service, exclude=top)
    if seed is not None:
        # Copied by ingot, never followed: the seed was written by a build and may hold any link.
        copy_tree(seed / "data", data, owner=owner, what="seeding the build cache")
    if owner is not None:
        os.chown(data, *owner)
    return DepsCache(key, top, hit=False)


def prune(root: Path, service: str, keep: int = KEEP) -> None:
    """Drop all but the newest `keep` complete caches of `service`."""
    for top in _complete(root / service)[keep:]:
        force_rmtree(top)


def _complete(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    tops = [p for p in directory.iterdir() if (p / _READY).is_file() and (p / "data").is_dir()]
    return sorted(tops, key=lambda p: (p / _READY).stat().st_mtime, reverse=True)


def _newest(directory: Path, *, exclude: Path) -> Path | None:
    return next((p for p in _complete(directory) if p != exclude), None)
