"""Listings of trees that are re-hashed only when something may have changed, or when it is time.

Drift and self-heal look at every stored artifact and checkout on every pass. Hashing them all each
time makes a pass cost artifact size times replicas; a stat walk (`tree_fingerprint`) costs one `lstat`
per entry whatever the files' sizes. So a tree is fully hashed when first seen, again whenever its
fingerprint differs from the one taken before its last hash, and in any case once `full_every`
seconds have passed since (`INGOT_REHASH_INTERVAL`, 10 min by default): what the fingerprint cannot
see (a write below the filesystem, a clock set back, bit rot) is found within that interval.

Trees that people edit (a deploy's build context, see ingot.deploy_check) are cached with `settle`: a
tree whose newest entry changed less than `settle` seconds before its fingerprint was taken is not
kept, as git does with "racily clean" files: two writes in one tick of the filesystem's clock, with
the same size, would look the same to `stat`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ingot.artifacts.digest import IgnoreFn, file_listing, tree_stat

DEFAULT_FULL_EVERY = 600.0


@dataclass
class _Seen:
    fingerprint: str
    listing: dict[str, str]
    hashed_at: float
    used_at: float


class TreeCache:
    """`listing(root)`: the same answer as `file_listing(root)`, from memory while nothing changed.

    Safe to call from several threads (the healer observes instances in threads): a tree is hashed by
    one of them at a time.
    """

    def __init__(self, full_every: float = DEFAULT_FULL_EVERY, clock: Callable[[], float] = time.monotonic,
                 settle: float = 0.0) -> None:
        self.full_every = full_every  # 0: hash every time (the cost before fingerprints)
        self.clock = clock
        self.settle_ns = int(settle * 1e9)  # 0: any tree is kept (stored trees nobody writes to)
        self.full_hashes = 0
        self.stat_hits = 0
        self._seen: dict[str, _Seen] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def listing(self, root: Path, ignore: IgnoreFn | None = None, variant: str = "") -> dict[str, str]:
        """`ignore`: entries left out of the listing, and of the fingerprint (a build context's state dir or
        bytecode changing is no reason to hash it again); `variant` names `ignore` in the cache's key."""
        key = f"{root}\0{variant}"
        with self._lock_for(key):
            now = self.clock()
            # Taken before hashing: a change made while the hash runs shows in the next fingerprint.
            taken_ns = time.time_ns()
            fingerprint, newest_ns = tree_stat(root, ignore=ignore)
            seen = self._seen.get(key)
            if seen is not None and seen.fingerprint == fingerprint and now - seen.hashed_at < self.full_every:
                seen.used_at = now
                self.stat_hits += 1
                return seen.listing
            self._seen.pop(key, None)  # a tree that cannot be listed now (a FIFO planted in it) is not cached
            listing = file_listing(root, ignore=ignore)
            self.full_hashes += 1
            if not self.settle_ns or newest_ns < taken_ns - self.settle_ns:
                self._seen[key] = _Seen(fingerprint, listing, now, now)
            self._forget_unused(now)
            return listing

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _forget_unused(self, now: float) -> None:
        # Checkouts come and go with instances: what no pass has asked about for a while is gone.
        horizon = max(self.full_every, 600.0) * 2
        with self._guard:
            for key in [k for k, s in self._seen.items() if now - s.used_at > horizon]:
                self._seen.pop(key, None)
                self._locks.pop(key, None)
