"""Tests of ingot.artifacts: tree digests, .ingotignore, the store, and process-runtime builds."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import time
import zipfile
from pathlib import Path

import pytest

from ingot.artifacts import (
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactStore,
    IgnoreRules,
    build_artifact,
    deps_dir,
    diff_listings,
    file_listing,
    is_digest,
    tree_digest,
)
from ingot.errors import OperationFailed, UserInputError


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", {"app.py": "print('hi')\n", "lib/util.py": "X = 1\n", "README": "r"})


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


# -- digests ------------------------------------------------------------------------------------


def test_digest_is_stable_across_copies_with_different_mtimes(tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tree, copy)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    digest = tree_digest(tree)
    assert is_digest(digest)
    assert tree_digest(copy) == digest
    assert tree_digest(tree) == digest  # and deterministic on re-run


def test_digest_changes_with_content(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "lib/util.py").write_text("X = 2\n")
    assert tree_digest(tree) != before


def test_digest_changes_with_executable_bit_only(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "app.py").chmod(0o600)  # non-exec mode bits are normalised away
    assert tree_digest(tree) == before
    (tree / "app.py").chmod(0o755)
    assert tree_digest(tree) != before


def test_digest_changes_with_rename(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "README").rename(tree / "README.txt")
    assert tree_digest(tree) != before


def test_empty_directories_are_part_of_the_digest(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "logs").mkdir()
    assert tree_digest(tree) != before
    assert file_listing(tree)["logs"].startswith("sha256:")


def test_symlinks_are_hashed_by_target_text_and_not_followed(tree: Path, tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "outside", {"secret": "a"})
    before = tree_digest(tree)
    (tree / "link").symlink_to(outside)
    with_link = tree_digest(tree)
    assert with_link != before
    (outside / "secret").write_text("b")  # the link's target changed, the link did not
    assert tree_digest(tree) == with_link
    (tree / "link").unlink()
    (tree / "link").symlink_to(tmp_path)
    assert tree_digest(tree) != with_link
    assert "link/secret" not in file_listing(tree)


def test_diff_listings_names_each_change(tree: Path) -> None:
    before = file_listing(tree)
    (tree / "README").write_text("changed")
    (tree / "lib/util.py").unlink()
    (tree / "new.txt").write_text("n")
    assert diff_listings(before, file_listing(tree)) == [
        ("README", "modified"),
        ("lib/util.py", "removed"),
        ("new.txt", "added"),
    ]


# -- .ingotignore -------------------------------------------------------------------------------


def test_ignore_patterns(tmp_path: Path) -> None:
    ctx = make_tree(
        tmp_path / "ctx",
        {
            ".ingotignore": "# comment\n*.log\n!keep.log\nbuild/\n/anchored.txt\ndocs/**/*.tmp\n!*.pyc\n",
            "app.py": "",
            "debug.log": "",
            "sub/x.log": "",
            "keep.log": "",
            "build/out.bin": "",
            "sub/build/out.bin": "",
            "notadir/build": "",
            "anchored.txt": "",
            "sub/anchored.txt": "",
            "docs/a/b/c.tmp": "",
            "docs/c.md": "",
            ".git/HEAD": "",
            ".ingot/state": "",
            "pkg/__pycache__/m.cpython-311.pyc": "",
            "pkg/m.pyc": "",
            ".ingot-deps/old/__init__.py": "",
        },
    )
    listing = file_listing(ctx, ignore=IgnoreRules.from_context(ctx).is_ignored)
    files = {rel for rel in listing if (ctx / rel).is_file()}
    assert files == {
        ".ingotignore",
        "app.py",
        "keep.log",
        "notadir/build",
        "sub/anchored.txt",
        "docs/c.md",
    }


def test_ignored_files_do_not_affect_the_digest(tmp_path: Path) -> None:
    ctx = make_tree(tmp_path / "ctx", {".ingotignore": "*.log\ncache/\n", "app.py": ""})
    rules = IgnoreRules.from_context(ctx)
    before = tree_digest(ctx, ignore=rules.is_ignored)
    make_tree(ctx, {"x.log": "1", "cache/blob": "2", "__pycache__/a.pyc": "3"})
    assert tree_digest(ctx, ignore=rules.is_ignored) == before
    (ctx / "app.py").write_text("changed")
    assert tree_digest(ctx, ignore=rules.is_ignored) != before


def test_invalid_ignore_pattern_names_file_and_line(tmp_path: Path) -> None:
    ctx = make_tree(tmp_path / "ctx", {".ingotignore": "*.log\n!\n"})
    with pytest.raises(UserInputError, match=r"\.ingotignore:2"):
        IgnoreRules.from_context(ctx)


# -- store --------------------------------------------------------------------------------------


def test_put_tree_stores_read_only_and_reuses_existing(store: ArtifactStore, tree: Path) -> None:
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    expected = tree_digest(tree)
    staging = store.new_staging_dir()
    shutil.copytree(tree, staging, dirs_exist_ok=True)

    digest = store.put_tree(staging)

    assert digest == expected
    assert not staging.exists()
    assert store.has(digest) and store.list_digests() == [digest]
    path = store.path_for(digest)
    # Owner-only read-only modes, in store directories only ingot can enter.
    assert stat.S_IMODE(path.stat().st_mode) == 0o500
    assert stat.S_IMODE((path / "lib").stat().st_mode) == 0o500
    assert stat.S_IMODE((path / "app.py").stat().st_mode) == 0o400
    assert stat.S_IMODE((path / "run.sh").stat().st_mode) == 0o500
    for directory in (store.root, store.objects_dir, store.listings_dir, store.tmp_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert store.read_listing(digest) == file_listing(tree)

    again = store.new_staging_dir()
    shutil.copytree(tree, again, dirs_exist_ok=True)
    assert store.put_tree(again) == digest
    assert not again.exists()
    assert store.verify(digest) == path


def test_put_tree_accepts_staging_outside_the_store(store: ArtifactStore, tree: Path) -> None:
    digest = store.put_tree(tree)
    assert digest == store.list_digests()[0]
    assert not tree.exists()


def test_verify_names_changed_files(store: ArtifactStore, tree: Path) -> None:
    digest = store.put_tree(tree)
    path = store.path_for(digest)
    (path / "lib/util.py").write_text("X = 'tampered'\n")  # we run as root: modes do not stop this
    (path / "lib/util.py").chmod(0o644)
    with pytest.raises(ArtifactCorrupt) as info:
        store.verify(digest)
    assert info.value.details == ["modified: lib/util.py"]
    assert isinstance(info.value, OperationFailed)


def test_verify_missing_artifact(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        store.verify("sha256:" + "0" * 64)


def test_remove_deletes_read_only_object(store: ArtifactStore, tree: Path) -> None:
    digest = store.put_tree(tree)
    store.remove(digest)
    assert not store.has(digest) and store.list_digests() == []
    assert store.read_listing(digest) is None


def test_input_index_round_trip(store: ArtifactStore) -> None:
    key, digest = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert store.lookup_input(key) is None
    store.record_input(key, digest)
    assert store.lookup_input(key) == digest


def test_malformed_digest_is_refused(store: ArtifactStore) -> None:
    with pytest.raises(UserInputError):
        store.path_for("sha256:../../etc")


# -- builds -------------------------------------------------------------------------------------


def test_build_twice_reuses_the_artifact(store: ArtifactStore, tmp_path: Path) -> None:
    ctx = make_tree(tmp_path / "ctx", {".ingotignore": "*.log\n", "app.py": "print(1)\n", "x.log": ""})
    first = build_artifact(store, ctx)
    assert not first.reused and first.deps_installed == 0
    assert first.path == store.path_for(first.digest)
    assert sorted(p.name for p in first.path.iterdir()) == [".ingotignore", "app.py"]
    assert deps_dir(first.path) is None

    (ctx / "y.log").write_text("ignored, so still the same input")
    second = build_artifact(store, ctx)
    assert second.reused
    assert (second.digest, second.input_key) == (first.digest, first.input_key)
    assert list(store.tmp_dir.iterdir()) == []


def test_build_rebuilds_when_the_stored_artifact_is_gone(store: ArtifactStore, tmp_path: Path) -> None:
    ctx = make_tree(tmp_path / "ctx", {"app.py": ""})
    first = build_artifact(store, ctx)
    store.remove(first.digest)
    again = build_artifact(store, ctx)
    assert not again.reused and again.digest == first.digest and store.has(first.digest)


def test_build_missing_context(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="nope"):
        build_artifact(store, tmp_path / "nope")


def _make_wheel(dest: Path) -> Path:
    """A minimal pure-Python wheel, written by hand: no build backend or network needed."""
    dist_info = "tinypkg-0.1.0.dist-info"
    files = {
        "tinypkg/__init__.py": b"GREETING = 'hello from tinypkg'\n",
        f"{dist_info}/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1.0\n",
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: ingot-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": b"[console_scripts]\ntinypkg-hello = tinypkg:main\n",
    }
    record = []
    for name, data in files.items():
        b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={b64},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    dest.mkdir(parents=True)
    wheel = dest / "tinypkg-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def test_build_installs_requirements_deterministically(tmp_path: Path) -> None:
    # Inside the context: a fenced build sees only its private copy of it (tmp_path is root's alone).
    ctx = make_tree(
        tmp_path / "ctx",
        {"app.py": "import tinypkg\n", "requirements.txt": "--no-index\n--find-links wheels\ntinypkg\n"},
    )
    _make_wheel(ctx / "wheels")
    lines: list[str] = []
    result = build_artifact(ArtifactStore(tmp_path / "s1"), ctx, on_output=lines.append)

    assert not result.reused and result.deps_installed == 1
    deps = deps_dir(result.path)
    assert deps == result.path / ".ingot-deps"
    assert (deps / "tinypkg" / "__init__.py").is_file()
    assert (deps / "tinypkg-0.1.0.dist-info" / "METADATA").is_file()
    assert not (deps / "tinypkg-0.1.0.dist-info" / "RECORD").exists()
    assert not list(deps.rglob("__pycache__"))
    assert any("tinypkg" in line for line in lines)

    # A fresh store, so the second build really runs pip: pip's output must be byte-identical.
    copy = tmp_path / "copy"
    shutil.copytree(ctx, copy)
    again = build_artifact(ArtifactStore(tmp_path / "s2"), copy)
    assert not again.reused
    assert again.digest == result.digest


def test_build_with_failing_pip_reports_its_output(store: ArtifactStore, tmp_path: Path) -> None:
    ctx = make_tree(
        tmp_path / "ctx",
        {"app.py": "", "requirements.txt": "--no-index\nno-such-package-ingot-test==1.0\n"},
    )
    with pytest.raises(OperationFailed, match=r"pip could not install requirements\.txt") as info:
        build_artifact(store, ctx)
    assert any("no-such-package-ingot-test" in line for line in info.value.details)
    assert 0 < len(info.value.details) <= 20
    assert list(store.tmp_dir.glob("*")) == []
    assert store.list_digests() == []


# -- files shared between artifacts ---------------------------------------------------------------


def _stored(store: ArtifactStore, tree: Path, files: dict[str, str]) -> str:
    staging = store.new_staging_dir()
    shutil.copytree(tree, staging, dirs_exist_ok=True)
    make_tree(staging, files)
    return store.put_tree(staging)


def test_artifacts_share_identical_files_and_prune_counts_only_what_it_frees(store: ArtifactStore,
                                                                              tree: Path) -> None:
    big = "x" * 200_000
    make_tree(tree, {"vendor/big.py": big})
    (tree / "run.sh").write_text(big)
    (tree / "run.sh").chmod(0o755)  # same bytes, executable: not the same entry, never one inode
    first = _stored(store, tree, {"app.py": "v = 1\n"})
    second = _stored(store, tree, {"app.py": "v = 2\n"})
    one, two = store.path_for(first), store.path_for(second)
    assert (one / "vendor/big.py").stat().st_ino == (two / "vendor/big.py").stat().st_ino
    assert (one / "app.py").stat().st_ino != (two / "app.py").stat().st_ino
    assert (one / "run.sh").stat().st_ino != (one / "vendor/big.py").stat().st_ino
    assert stat.S_IMODE((two / "run.sh").stat().st_mode) == 0o500
    assert stat.S_IMODE((two / "vendor/big.py").stat().st_mode) == 0o400
    assert store.verify(first) and store.verify(second)

    # Removing one frees its own files only; the shared ones go with the last artifact linking them.
    before = store.disk_usage()
    freed = store.space_freed_by([first])
    assert 0 < freed < 100_000
    store.remove(first)
    assert before - store.disk_usage() == freed
    assert store.verify(second)
    assert store.space_freed_by([second]) > 400_000
    store.remove(second)
    assert list(store.files_dir.iterdir()) == []


def test_a_damaged_shared_file_is_found_in_every_artifact_and_never_linked_again(store: ArtifactStore,
                                                                                  tree: Path) -> None:
    first = _stored(store, tree, {"app.py": "v = 1\n"})
    second = _stored(store, tree, {"app.py": "v = 2\n"})
    shared = store.path_for(first) / "lib/util.py"
    shared.chmod(0o644)
    shared.write_text("X = 'tampered'\n")  # one inode: both artifacts are damaged
    for digest in (first, second):
        with pytest.raises(ArtifactCorrupt) as info:
            store.verify(digest)
        assert info.value.details == ["modified: lib/util.py"]
    # A fresh build of the same content does not reuse the damaged file: it replaces it.
    assert _stored(store, tree, {"app.py": "v = 1\n"}) == first
    assert store.verify(first)
    assert (store.path_for(first) / "lib/util.py").read_text() == "X = 1\n"
    with pytest.raises(ArtifactCorrupt):
        store.verify(second)  # still linking the damaged copy: found, as before
    third = _stored(store, tree, {"app.py": "v = 3\n"})
    assert (store.path_for(third) / "lib/util.py").stat().st_ino == \
        (store.path_for(first) / "lib/util.py").stat().st_ino


# -- stat fingerprints ------------------------------------------------------------------------------


def test_tree_cache_rehashes_on_a_changed_fingerprint_and_on_its_schedule(tree: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from ingot.artifacts import fingerprint

    now = [0.0]
    cache = fingerprint.TreeCache(full_every=60.0, clock=lambda: now[0])
    assert cache.listing(tree) == file_listing(tree) and cache.full_hashes == 1
    assert cache.listing(tree) == file_listing(tree) and (cache.full_hashes, cache.stat_hits) == (1, 1)

    # An ordinary edit changes the fingerprint: hashed again at once.
    (tree / "app.py").write_text("print('edited')\n")
    assert cache.listing(tree) == file_listing(tree) and cache.full_hashes == 2
    # The same size and mtime put back (touch -r): ctime still moves, so the fingerprint sees it too.
    st = (tree / "app.py").stat()
    (tree / "app.py").write_text("print('EDITED')\n")
    os.utime(tree / "app.py", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.listing(tree) == file_listing(tree) and cache.full_hashes == 3

    # What no stat shows (a write below the filesystem, bit rot): only the scheduled full re-hash finds it.
    monkeypatch.setattr(fingerprint, "tree_stat", lambda _root, ignore=None: ("sha256:unchanged", 0))
    cache.listing(tree)
    stale = cache.full_hashes
    (tree / "app.py").write_text("print('rot')\n")
    now[0] = 59.0
    assert cache.listing(tree) != file_listing(tree) and cache.full_hashes == stale
    now[0] = 60.0 + 59.0
    assert cache.listing(tree) == file_listing(tree) and cache.full_hashes == stale + 1


def test_tree_cache_with_settle_keeps_no_listing_of_a_tree_changed_just_now(tree: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two same-size writes in one tick of the filesystem's clock look alike to stat: a build context
    that changed within `settle` of its fingerprint is hashed again next time, until it has been still."""
    from ingot.artifacts import fingerprint

    cache = fingerprint.TreeCache(settle=2.0)
    cache.listing(tree)
    assert cache.listing(tree) == file_listing(tree) and (cache.full_hashes, cache.stat_hits) == (2, 0)
    later = time.time_ns() + 10**10  # as if 10 s had passed since the tree was written
    monkeypatch.setattr(fingerprint.time, "time_ns", lambda: later)
    cache.listing(tree)
    assert cache.listing(tree) == file_listing(tree) and (cache.full_hashes, cache.stat_hits) == (3, 1)


def test_tree_cache_leaves_ignored_entries_out_of_the_fingerprint_too(tree: Path) -> None:
    from ingot.artifacts import IgnoreRules, fingerprint

    ignore = IgnoreRules.from_context(tree).is_ignored
    cache = fingerprint.TreeCache()
    cache.listing(tree, ignore, "rules")
    (tree / ".ingot").mkdir(exist_ok=True)  # the state beside the spec changes all the time: not rehashed
    (tree / ".ingot" / "state.db").write_text("x")
    assert cache.listing(tree, ignore, "rules") == file_listing(tree, ignore=ignore)
    assert (cache.full_hashes, cache.stat_hits) == (2, 0)  # the root directory's mtime moved, once
    (tree / ".ingot" / "state.db").write_text("y")
    (tree / "__pycache__").mkdir()  # inside lib/ it would move lib/'s mtime; here the root's, again
    (tree / "lib" / "util.cpython-311.pyc").write_text("z")
    assert cache.listing(tree, ignore, "rules") == file_listing(tree, ignore=ignore)
    assert (cache.full_hashes, cache.stat_hits) == (3, 0)
    (tree / ".ingot" / "state.db").write_text("w")
    (tree / "lib" / "util.cpython-311.pyc").write_text("zz")
    assert cache.listing(tree, ignore, "rules") == file_listing(tree, ignore=ignore)
    assert (cache.full_hashes, cache.stat_hits) == (3, 1)
    # Another `ignore` is another listing, kept apart.
    assert cache.listing(tree) == file_listing(tree) and cache.full_hashes == 4
