"""The cost of a drift/self-heal pass against artifact size and replicas; and what sharing files saves.

Pass cost: for each artifact size x replica count, an artifact is stored (files of ~100 KB, like a
vendored dependency tree, plus a few small ones) and one checkout made per replica (the worst case:
each replica its own, as after self-heal replacements). A pass looks at what the agent looks at: the
stored artifact (`verify`) and every checkout's listing. It is timed both ways in the same run: the
full re-hash every tree got on every pass before (the baseline), and the stat path (a `TreeCache`
whose trees have not changed: one `lstat` per entry). Medians of `--passes` passes, warm page cache.

Storage: the bundled example with a vendored dependency tree (`--vendor-mb`, 20 MB of random files)
deployed `--deploys` times (each deploy a new version of app.py). The state directory is measured
with each artifact counted as a full copy (the layout before files were shared, same run) and as it
is on disk (shared files counted once); then `ingot prune --json` reports the bytes it frees.

    python -m bench.drift_bench [--sizes 1,20,80] [--replicas 1,4,8] [--deploys 8] [--json bench/results/drift.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.harness import make_example, stop_everything

from bench._common import print_table, write_json
from ingot.artifacts import ArtifactStore, file_listing
from ingot.artifacts.fingerprint import TreeCache

FILE_BYTES = 100_000


def make_artifact(store: ArtifactStore, megabytes: int) -> str:
    staging = store.new_staging_dir()
    vendor = staging / "vendor"
    for i in range(max(1, megabytes * 1_000_000 // FILE_BYTES)):
        package = vendor / f"pkg{i // 50}"
        package.mkdir(parents=True, exist_ok=True)
        (package / f"mod{i}.py").write_bytes(os.urandom(FILE_BYTES))
    (staging / "app.py").write_text("print('hello')\n")
    return store.put_tree(staging)


def timed(passes: int, one_pass: Callable[[], None]) -> float:
    samples = []
    for _ in range(passes):
        start = time.perf_counter()
        one_pass()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def pass_cost(work: Path, megabytes: int, replicas: int, passes: int) -> dict[str, Any]:
    store = ArtifactStore(work / f"store-{megabytes}-{replicas}")
    digest = make_artifact(store, megabytes)
    checkouts = [store.checkout(digest, work / f"runs-{megabytes}-{replicas}") for _ in range(replicas)]
    files = len(file_listing(store.path_for(digest)))

    def full() -> None:
        store.verify(digest)
        for checkout in checkouts:
            file_listing(checkout)

    cache = TreeCache(full_every=3600.0)

    def stat_path() -> None:
        store.verify(digest, cache.listing)
        for checkout in checkouts:
            cache.listing(checkout)

    full()  # the page cache warm for both
    stat_path()  # the first pass of a TreeCache is a full hash; the passes timed are the ones after
    full_ms, stat_ms = timed(passes, full), timed(passes, stat_path)
    assert cache.full_hashes == 1 + replicas, cache.full_hashes
    shutil.rmtree(store.root)
    shutil.rmtree(work / f"runs-{megabytes}-{replicas}")
    return {"artifact_mb": megabytes, "replicas": replicas, "entries_per_tree": files,
            "full_rehash_ms": round(full_ms, 1), "stat_path_ms": round(stat_ms, 2),
            "speedup": round(full_ms / stat_ms, 1) if stat_ms else None}


def bytes_on_disk(root: Path, *, once: bool) -> int:
    """Blocks under `root`; `once`: each inode counted once (what is on disk), else every link as a copy."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for current, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(current, name))
            if once and (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def storage(work: Path, deploys: int, vendor_mb: int) -> dict[str, Any]:
    example = make_example(work / "storage")
    example.env["INGOT_HEAL_INTERVAL"] = "0"
    vendor = example.root / "vendor"
    for i in range(vendor_mb * 1_000_000 // FILE_BYTES):
        (vendor / f"pkg{i // 50}").mkdir(parents=True, exist_ok=True)
        (vendor / f"pkg{i // 50}" / f"mod{i}.py").write_bytes(os.urandom(FILE_BYTES))
    try:
        for version in range(1, deploys + 1):
            example.set_version(str(version))
            example.ingot("deploy", check=True)
        places = [example.state, example.runs]
        copies = sum(bytes_on_disk(p, once=False) for p in places)
        shared = sum(bytes_on_disk(p, once=True) for p in places)
        store = example.state / "artifacts"
        store_copies, store_shared = bytes_on_disk(store, once=False), bytes_on_disk(store, once=True)
        pruned = example.ingot("prune", "--json", check=True).json
        after_prune = sum(bytes_on_disk(p, once=True) for p in places)
    finally:
        stop_everything(example)
    mb = 1e6
    return {"deploys": deploys, "vendored_mb": vendor_mb,
            "state_mb_copies": round(copies / mb, 1), "state_mb_shared": round(shared / mb, 1),
            "store_mb_copies": round(store_copies / mb, 1), "store_mb_shared": round(store_shared / mb, 1),
            "prune_removed": len(pruned["removed"]), "prune_freed_mb": round(pruned["freed_bytes"] / mb, 2),
            "state_mb_after_prune": round(after_prune / mb, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1,20,80", help="artifact sizes, MB")
    parser.add_argument("--replicas", default="1,4,8")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--deploys", type=int, default=8)
    parser.add_argument("--vendor-mb", type=int, default=20)
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument("--json", default="bench/results/drift.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        work = Path(tmp)
        rows = [pass_cost(work, int(size), int(replicas), args.passes)
                for size in args.sizes.split(",") for replicas in args.replicas.split(",")]
        print_table("one drift/self-heal pass: full re-hash (before) vs stat fingerprints (now)", rows)
        stored = None if args.skip_storage else storage(work, args.deploys, args.vendor_mb)
        if stored:
            print_table("state size: every artifact a copy (before) vs files shared (now)", [stored])
    path = write_json(args.json, {"passes": rows, "storage": stored, "argv": sys.argv[1:]})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
