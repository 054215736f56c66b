"""The content-addressed artifact store.

Layout under `root`:

    objects/<hex>/          the artifact tree, named by its tree digest: owner-read-only (files 0400,
                            executables 0500, directories 0500)
    listings/<hex>.json     the file listing at store time, so corruption can be pinned to files
    files/<entry-hex>       one copy of each distinct file (contents + executable bit), hard-linked
                            into every object that has it: releases share what they have in common
    inputs/<input-hex>      text: the artifact digest built from that input (the build cache index)
    tmp/                    staging dirs; on the same filesystem so objects appear by one rename

An object is complete once visible: its tree is staged, its listing written and its modes set
before the rename that publishes it. Mode bits do not stop root, so `verify` is the real guarantee.
The store's own directories are 0700: an artifact is read by ingot, which hands instances a copy.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from ingot.artifacts.digest import (
    DIGEST_PREFIX,
    diff_listings,
    file_listing,
    is_digest,
    is_executable,
    listing_digest,
    path_entry_digest,
)
from ingot.atomic import write_atomically
from ingot.diskspace import disk_full_error, is_disk_full, require_space, tree_size
from ingot.errors import OperationFailed, UserInputError

READ_ONLY_FILE = 0o400
READ_ONLY_EXECUTABLE = 0o500
READ_ONLY_DIR = 0o500


class ArtifactNotFound(OperationFailed):
    """The store holds no artifact with the requested digest."""


class ArtifactCorrupt(OperationFailed):
    """A stored artifact no longer matches its digest; `details` name the changed entries."""


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects_dir = root / "objects"
        self.listings_dir = root / "listings"
        self.files_dir = root / "files"
        self.inputs_dir = root / "inputs"
        self.tmp_dir = root / "tmp"

    # -- lookup -------------------------------------------------------------------------------

    def path_for(self, digest: str) -> Path:
        """Where the artifact `digest` lives (whether or not it is stored)."""
        return self.objects_dir / _hex(digest)

    def has(self, digest: str) -> bool:
        return self.path_for(digest).is_dir()

    def list_digests(self) -> list[str]:
        if not self.objects_dir.is_dir():
            return []
        digests = (DIGEST_PREFIX + p.name for p in self.objects_dir.iterdir() if p.is_dir())
        return sorted(d for d in digests if is_digest(d))

    # -- writing ------------------------------------------------------------------------------

    def new_staging_dir(self) -> Path:
        """A fresh empty directory to assemble a tree in before `put_tree`."""
        self._private(self.tmp_dir)
        return Path(tempfile.mkdtemp(prefix="stage-", dir=self.tmp_dir))

    def put_tree(self, staging_dir: Path) -> str:
        """Store the tree at `staging_dir` and return its digest. Consumes `staging_dir`.

        If the artifact is already stored, the staged copy is discarded and the stored one reused.
        """
        staging_dir = self._on_store_filesystem(staging_dir)
        listing = file_listing(staging_dir)
        digest = listing_digest(listing)
        target = self.path_for(digest)
        if target.is_dir():
            if self.intact(digest):
                force_rmtree(staging_dir)
                return digest
            # The stored copy was damaged: the fresh build of the same content takes its place.
            self._discard(target)
        self._write_listing(digest, listing)
        # Shared before directories are made read-only (a link is put in the staged file's place); modes
        # first, as they belong to the inode every artifact with that file will share.
        _make_read_only(staging_dir, include_root=False, dirs=False)
        self._share_files(staging_dir, listing)
        _make_read_only(staging_dir, include_root=False)
        self._private(self.objects_dir)
        try:
            os.rename(staging_dir, target)
        except OSError as exc:
            # A concurrent build of the same content won the race: its object is as good as ours.
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and target.is_dir():
                force_rmtree(staging_dir)
                return digest
            raise
        # The root is made read-only last: renaming a directory needs write access to it (for `..`).
        target.chmod(READ_ONLY_DIR)
        return digest

    def checkout(self, digest: str, runs_dir: Path) -> Path:
        """A fresh read-only copy of the verified artifact under `runs_dir`, for instances to run from.

        Instances never run from the stored object itself, so that whatever happens to a running copy
        (an edit, a planted file) leaves the store's copy intact to verify against and restore from.
        """
        source = self.verify(digest)
        runs_dir.mkdir(parents=True, exist_ok=True)
        require_space(runs_dir, tree_size(source), f"a checkout of artifact {digest}")
        target = Path(tempfile.mkdtemp(prefix=_hex(digest)[:12] + "-", dir=runs_dir))
        target.rmdir()
        try:
            shutil.copytree(source, target, symlinks=True, copy_function=shutil.copy2)
        except BaseException as exc:
            if target.exists():
                force_rmtree(target)  # no half copy is left behind
            if isinstance(exc, shutil.Error | OSError) and _ran_out_of_space(exc):
                raise disk_full_error(OSError(28, "No space left on device", str(target)),
                                      f"the checkout of artifact {digest}") from exc
            raise
        _make_read_only(target, include_root=True)
        return target

    def remove(self, digest: str) -> None:
        """Delete an artifact and its listing; input records pointing at it become misses.

        Its shared files go with the last artifact that links them.
        """
        path = self.path_for(digest)
        if path.exists():
            force_rmtree(path)
        self._listing_path(digest).unlink(missing_ok=True)
        self._sweep_files()

    def space_freed_by(self, digests: list[str]) -> int:
        """Bytes on disk that removing `digests` would free: files shared with a kept artifact do not count."""
        links: dict[tuple[int, int], int] = {}
        blocks: dict[tuple[int, int], tuple[int, int]] = {}  # inode -> (its link count, bytes on disk)
        for digest in digests:
            paths = [self._listing_path(digest)]
            if self.has(digest):
                dirs, files = _dirs_and_files(self.path_for(digest))
                paths += [self.path_for(digest), *map(Path, dirs), *map(Path, files)]
            for path in paths:
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                inode = (st.st_dev, st.st_ino)
                links[inode] = links.get(inode, 0) + 1
                # A directory's link count counts its subdirectories' `..`: it is the artifact's own.
                blocks[inode] = (1 if stat.S_ISDIR(st.st_mode) else st.st_nlink, st.st_blocks * 512)
        shared = self._shared_inodes()
        # An inode is freed once its last link goes: the links in these artifacts, and its shared name.
        return sum(size for inode, (nlink, size) in blocks.items()
                   if nlink - links[inode] - (1 if inode in shared else 0) <= 0)

    def disk_usage(self) -> int:
        """Bytes on disk the store takes, each file counted once however many artifacts share it."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for current, dirnames, filenames in os.walk(self.root):
            for name in [*dirnames, *filenames]:
                st = os.lstat(os.path.join(current, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
        return total

    # -- sharing files between artifacts --------------------------------------------------------

    def _share_files(self, staging_dir: Path, listing: dict[str, str]) -> None:
        """Replace each staged file by a hard link to the store's one copy of the same entry.

        Files are shared under `files/<entry hex>`, named by their listing digest (contents and the
        executable bit: modes belong to the inode, so a file and an executable with the same bytes stay
        apart). A shared copy is re-hashed before it is linked into a new artifact: a damaged one is
        never reused, the fresh file takes its name (artifacts still linking the damaged one fail to
        verify, as before). Verification is unchanged: every artifact's tree is hashed as it is.
        """
        self._private(self.files_dir)
        for rel, entry_digest in listing.items():
            staged = staging_dir / rel
            if not stat.S_ISREG(os.lstat(staged).st_mode):
                continue
            shared = self.files_dir / _hex(entry_digest)
            try:
                self._link_shared(staged, shared, entry_digest)
            except OSError as exc:
                if exc.errno not in (errno.EMLINK, errno.EXDEV, errno.EPERM):
                    raise
                # Too many links to one inode (or no hard links here): this artifact keeps its own copy.

    def _link_shared(self, staged: Path, shared: Path, entry_digest: str) -> None:
        for _attempt in range(3):
            try:
                self._link_shared_once(staged, shared, entry_digest)
                return
            except FileNotFoundError:
                continue  # a prune swept the shared copy away meanwhile: this file becomes it
        raise OSError(errno.EMLINK, "the shared copy kept vanishing", str(shared))  # keep our own copy

    def _link_shared_once(self, staged: Path, shared: Path, entry_digest: str) -> None:
        try:
            os.link(staged, shared)  # the first artifact with this file: its copy becomes the shared one
            return
        except FileExistsError:
            pass
        try:
            intact = path_entry_digest(str(shared)) == entry_digest
        except FileNotFoundError:
            raise
        except (OSError, UserInputError):
            intact = False
        if intact:
            if os.path.samefile(shared, staged):
                return
            linked = staged.with_name(staged.name + ".ingot-link")
            os.link(shared, linked)
            os.replace(linked, staged)
            return
        # Damaged (or not a file): the staged copy takes the shared name, in one rename.
        fresh = self.files_dir / f".{shared.name}.{os.getpid()}.tmp"
        fresh.unlink(missing_ok=True)
        os.link(staged, fresh)
        os.replace(fresh, shared)

    def _shared_inodes(self) -> set[tuple[int, int]]:
        if not self.files_dir.is_dir():
            return set()
        inodes = set()
        for entry in os.scandir(self.files_dir):
            st = entry.stat(follow_symlinks=False)
            inodes.add((st.st_dev, st.st_ino))
        return inodes

    def _sweep_files(self) -> None:
        """Delete shared files no artifact links any more (their only name is the shared one)."""
        if not self.files_dir.is_dir():
            return
        for entry in os.scandir(self.files_dir):
            if entry.stat(follow_symlinks=False).st_nlink <= 1:
                os.unlink(entry.path)

    def _discard(self, target: Path) -> None:
        """Take a stored object out of the way at once (one rename), then delete it."""
        self._private(self.tmp_dir)
        aside = Path(tempfile.mkdtemp(prefix="discard-", dir=self.tmp_dir))
        target.chmod(0o755)  # renaming a directory needs write access to it (for `..`)
        os.rename(target, aside / "object")
        force_rmtree(aside)

    # -- verification -------------------------------------------------------------------------

    def intact(self, digest: str) -> bool:
        """Whether the stored artifact is there and still matches its digest."""
        try:
            self.verify(digest)
        except OperationFailed:
            return False
        return True

    def verify(self, digest: str, lister: Callable[[Path], dict[str, str]] = file_listing) -> Path:
        """Recompute the digest of the stored tree; return its path, or raise `ArtifactCorrupt`.

        `lister` is how the tree is listed: a full hash by default; the agent's checks pass a
        `TreeCache`'s, which re-hashes only when the tree's stat fingerprint changed or it is time.
        """
        path = self.path_for(digest)
        if not path.is_dir():
            raise ArtifactNotFound(f"artifact {digest} is not in the store at {self.root}")
        try:
            actual = lister(path)
        except UserInputError as exc:  # e.g. a FIFO planted in the tree: corruption, not bad input
            raise ArtifactCorrupt(f"artifact {digest} at {path} has been modified: {exc.message}") from exc
        if listing_digest(actual) == digest:
            return path
        raise ArtifactCorrupt(
            f"artifact {digest} at {path} has been modified since it was stored",
            details=self._describe_changes(digest, actual),
        )

    def _describe_changes(self, digest: str, actual: dict[str, str]) -> list[str]:
        expected = self.read_listing(digest)
        if expected is None or listing_digest(expected) != digest:
            return ["the listing recorded at store time is missing or damaged: cannot name the changes"]
        return [f"{change}: {rel}" for rel, change in diff_listings(expected, actual)]

    def read_listing(self, digest: str) -> dict[str, str] | None:
        """The listing recorded when `digest` was stored, or None if missing or unreadable."""
        try:
            data = json.loads(self._listing_path(digest).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return None
        return {str(k): v for k, v in data.items()}

    # -- build cache index --------------------------------------------------------------------

    def lookup_input(self, input_key: str) -> str | None:
        """The artifact digest recorded for `input_key`, if any. It may since have been removed."""
        try:
            recorded = (self.inputs_dir / _hex(input_key)).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return recorded if is_digest(recorded) else None

    def record_input(self, input_key: str, digest: str) -> None:
        _hex(digest)  # refuse to record garbage that lookup_input would later have to ignore
        self._private(self.inputs_dir)
        write_atomically(self.inputs_dir / _hex(input_key), digest + "\n")

    # -- internals ----------------------------------------------------------------------------

    def _private(self, directory: Path) -> None:
        """Make `directory` (and the store's root) exist, 0700: nobody but ingot lists or reads the store."""
        for path in (self.root, directory):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat.S_IMODE(path.stat().st_mode) != 0o700:
                path.chmod(0o700)

    def _listing_path(self, digest: str) -> Path:
        return self.listings_dir / f"{_hex(digest)}.json"

    def _write_listing(self, digest: str, listing: dict[str, str]) -> None:
        self._private(self.listings_dir)
        write_atomically(self._listing_path(digest), json.dumps(listing, indent=0, sort_keys=True) + "\n")

    def _on_store_filesystem(self, staging_dir: Path) -> Path:
        # Publishing is a rename, which cannot cross filesystems: copy a foreign staging dir in first.
        if staging_dir.stat().st_dev == self._tmp_dev():
            return staging_dir
        require_space(self.tmp_dir, tree_size(staging_dir), f"storing the artifact built in {staging_dir}")
        local = self.new_staging_dir()
        shutil.copytree(staging_dir, local, symlinks=True, dirs_exist_ok=True)
        force_rmtree(staging_dir)
        return local

    def _tmp_dev(self) -> int:
        self._private(self.tmp_dir)
        return self.tmp_dir.stat().st_dev


def _ran_out_of_space(exc: BaseException) -> bool:
    # copytree gathers per-file failures into one shutil.Error of (source, target, why) triples.
    if isinstance(exc, shutil.Error):
        return any("No space left" in str(why) for *_paths, why in exc.args[0])
    return is_disk_full(exc)


def _hex(digest: str) -> str:
    # Validating here also keeps a crafted "digest" from naming a path outside the store.
    if not is_digest(digest):
        raise UserInputError(f"not a digest: {digest!r}", details=["expected sha256:<64 hex digits>"])
    return digest.removeprefix(DIGEST_PREFIX)


def _dirs_and_files(root: Path) -> tuple[list[str], list[str]]:
    """Real directories and regular files below `root`, parents first; symlinks are left out."""
    dirs: list[str] = []
    files: list[str] = []
    for current, dirnames, filenames in os.walk(root):
        # os.walk lists symlinks to directories among dirnames; chmod on them would follow them out.
        dirs.extend(p for p in (os.path.join(current, n) for n in dirnames) if not os.path.islink(p))
        files.extend(p for p in (os.path.join(current, n) for n in filenames) if not os.path.islink(p))
    return dirs, files


def _make_read_only(root: Path, *, include_root: bool, dirs: bool = True) -> None:
    # Owner only: whoever else needs the tree (an instance's user) gets a copy of its own.
    subdirs, files = _dirs_and_files(root)
    for f in files:
        mode = os.stat(f).st_mode
        wanted = READ_ONLY_EXECUTABLE if is_executable(mode) else READ_ONLY_FILE
        if stat.S_IMODE(mode) != wanted:  # a chmod, even to the same mode, touches a shared file's ctime
            os.chmod(f, wanted)
    if not dirs:
        return
    for d in reversed(subdirs):  # children first, so a parent is still writable while we work in it
        os.chmod(d, READ_ONLY_DIR)
    if include_root:
        root.chmod(READ_ONLY_DIR)


def force_rmtree(root: Path) -> None:
    """Delete a tree even if it was made read-only (as stored objects are)."""
    if root.is_symlink():
        # Only the link goes: walking it would chmod and delete whatever it points at.
        root.unlink()
        return
    if os.geteuid() == 0:
        # Root needs no write bits to unlink, and must not chmod by path in a tree another user may still be
        # changing (a directory swapped for a symlink to /etc would have root chmod what it points at).
        shutil.rmtree(root)
        return
    # Unlinking needs write access to the parent dir (for non-root users); files' modes do not matter.
    root.chmod(stat.S_IMODE(root.stat().st_mode) | 0o700)
    dirs, _ = _dirs_and_files(root)
    for d in dirs:
        os.chmod(d, 0o755)
    shutil.rmtree(root)
