"""Content digests of directory trees.

A tree digest covers, for every entry below the root: its relative POSIX path, its type (file, dir,
symlink) and, per type, the only attributes that change behaviour: a file's contents and whether it
is executable, a symlink's target text. Timestamps, owners, other mode bits and the root's own
location never enter, so two copies of the same tree digest the same wherever and whenever made.

Directories are entries of their own, so an empty directory changes the digest: programs can depend
on a directory existing (a log or upload dir), and an artifact must reproduce it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from ingot.errors import UserInputError

DIGEST_PREFIX = "sha256:"
_CHUNK = 1024 * 1024

# (relative POSIX path, is_dir) -> True to leave the entry (and, for a directory, everything in it) out.
IgnoreFn = Callable[[str, bool], bool]
Change = Literal["added", "removed", "modified"]


def tree_digest(root: Path, *, ignore: IgnoreFn | None = None) -> str:
    """The `sha256:<hex>` digest of the tree under `root` (the root directory itself excluded)."""
    return listing_digest(file_listing(root, ignore=ignore))


def file_listing(root: Path, *, ignore: IgnoreFn | None = None) -> dict[str, str]:
    """Relative POSIX path -> entry digest, for every entry under `root`, sorted by path.

    The per-entry digests let a drift check name the entries that changed, not only say that
    something did.
    """
    if not root.is_dir():
        raise UserInputError(f"not a directory: {root}")
    return {rel: _entry_digest(entry, rel) for rel, entry in sorted(_walk(root, "", ignore))}


def listing_digest(listing: dict[str, str]) -> str:
    """The tree digest of a listing; `tree_digest(root) == listing_digest(file_listing(root))`."""
    h = hashlib.sha256(b"ingot-tree-v1\n")
    for rel in sorted(listing):
        # NUL and newline separate fields: a NUL cannot occur in a path, so no two listings collide.
        h.update(_encode(rel) + b"\0" + listing[rel].encode("ascii") + b"\n")
    return DIGEST_PREFIX + h.hexdigest()


def diff_listings(expected: dict[str, str], actual: dict[str, str]) -> list[tuple[str, Change]]:
    """(path, "added" | "removed" | "modified") for every path that differs, sorted by path."""
    changes: list[tuple[str, Change]] = []
    for rel in sorted(expected.keys() | actual.keys()):
        if rel not in actual:
            changes.append((rel, "removed"))
        elif rel not in expected:
            changes.append((rel, "added"))
        elif expected[rel] != actual[rel]:
            changes.append((rel, "modified"))
    return changes


def is_digest(value: str) -> bool:
    """True for a well-formed `sha256:<64 lowercase hex>` string."""
    hex_part = value.removeprefix(DIGEST_PREFIX)
    return (
        value.startswith(DIGEST_PREFIX)
        and len(hex_part) == 64
        and all(c in "0123456789abcdef" for c in hex_part)
    )


def is_executable(mode: int) -> bool:
    """Any execute bit counts: what matters is that *someone* is meant to run the file."""
    return bool(mode & 0o111)


def _walk(directory: Path, prefix: str, ignore: IgnoreFn | None) -> Iterator[tuple[str, os.DirEntry[str]]]:
    with os.scandir(directory) as it:
        entries = list(it)
    for entry in entries:
        rel = prefix + entry.name
        # Never follow symlinks: the link itself is the content, and following could leave the tree.
        is_dir = entry.is_dir(follow_symlinks=False)
        if ignore is not None and ignore(rel, is_dir):
            continue
        yield rel, entry
        if is_dir:
            yield from _walk(Path(entry.path), rel + "/", ignore)


def tree_fingerprint(root: Path) -> str:
    """A digest of what `stat` says of every entry under `root` (and of `root`): no file is read.

    Path, type and mode bits, size, mtime, ctime, device and inode. A write through the filesystem
    changes mtime and ctime; `touch -r` (or `utime`) can put mtime back but not ctime, which only a
    clock set back or a write below the filesystem (the raw device, a failing disk) leaves as it
    was. Those, and nothing else, are left to the periodic full re-hash (see `TreeCache`).
    """
    return tree_stat(root)[0]


def tree_stat(root: Path, *, ignore: IgnoreFn | None = None) -> tuple[str, int]:
    """`tree_fingerprint(root)` of the entries `ignore` leaves in, and the newest mtime or ctime (ns) of
    them: a tree changed in the same tick of the filesystem's clock as its fingerprint was taken could
    change again unseen."""
    h = hashlib.sha256(b"ingot-stat-v1\n")
    st = os.lstat(root)
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    h.update(b"%d %d %d %d %d\n" % (st.st_dev, st.st_ino, st.st_mode, st.st_mtime_ns, st.st_ctime_ns))
    for rel, entry in _walk(root, "", ignore):
        st = entry.stat(follow_symlinks=False)
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
        h.update(_encode(rel) + b"\0%d %d %d %d %d %d\n" % (
            st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino))
    return DIGEST_PREFIX + h.hexdigest(), newest


def path_entry_digest(path: str) -> str:
    """The listing digest of one entry at `path` (see `file_listing`); raises OSError if it is gone."""
    return _digest_of(path, os.lstat(path), path)


def _entry_digest(entry: os.DirEntry[str], rel: str) -> str:
    return _digest_of(entry.path, entry.stat(follow_symlinks=False), rel)


def _digest_of(path: str, st: os.stat_result, rel: str) -> str:
    if stat.S_ISLNK(st.st_mode):
        payload = b"symlink\0" + _encode(os.readlink(path))
    elif stat.S_ISDIR(st.st_mode):
        payload = b"dir\0"
    elif stat.S_ISREG(st.st_mode):
        flag = b"x" if is_executable(st.st_mode) else b"-"
        payload = b"file\0" + flag + b"\0" + _file_sha256(path)
    else:
        raise UserInputError(
            f"unsupported file type at {rel}",
            details=["only regular files, directories and symlinks can be part of an artifact"],
        )
    return DIGEST_PREFIX + hashlib.sha256(payload).hexdigest()


def _file_sha256(path: str) -> bytes:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    # readinto on one reused buffer: no per-chunk allocation, memory stays flat for huge files.
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.digest()


def _encode(text: str) -> bytes:
    # surrogateescape round-trips file names that are not valid UTF-8 instead of failing on them.
    return text.encode("utf-8", "surrogateescape")
