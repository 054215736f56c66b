"""The ledger and deployment history at a million entries: newest-first reads and verification.

Builds a project (the bundled example, built once so it has a real signing key and pin), then bulk-
appends `--entries` valid, signed ledger entries (hashes chained, signatures made by two worker
processes, inserted in a few large transactions, not one per entry) and `--entries / 20` deployments
with their steps and activations. Then measures, each as the CLI command a user runs (end to end, a new
process) and as its in-process cost:

- `audit log --limit 20` against the old read (every entry of the environment, then the last 20);
- `history --limit 20` against the old per-row read of the service's whole activation history;
- `audit verify --full` (entries/s of the chain check) against the old per-entry check (payload
  decoded, every signature verified), timed on its first `--sample` entries;
- `audit verify` with `--new` entries appended on top of the verified point (incremental).

    python -m bench.ledger_bench [--entries 1000000] [--new 1000] [--json bench/results/ledger.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from tests.support.harness import ExampleProject, make_example

from bench._common import print_table, write_json
from ingot import checkpoint, ledger, operations
from ingot.canonical import canonical_json
from ingot.project import Project, open_project
from ingot.releases import new_release
from ingot.signing import load_key, public_key_text, sign, signature_valid
from ingot.store import Store
from ingot.store import schema as t

ENVIRONMENTS = ("production", "staging")
SERVICES = ("web", "api", "worker", "billing", "search")
ACTIONS = ("deploy.start", "deploy.finish", "config.set", "drift.found", "self_heal.backoff", "build")
CHUNK = 50_000


def _sign_all(pem: bytes, digests: list[str]) -> list[str]:
    key = serialization.load_pem_private_key(pem, password=None)
    return [sign(key, ledger.signed_head(d)) for d in digests]  # type: ignore[arg-type]


def append_bulk(store: Store, keys_dir: Path, count: int, pool: ProcessPoolExecutor) -> float:
    """Append `count` signed entries continuing the chain, CHUNK per transaction; seconds taken."""
    started = time.perf_counter()
    key = load_key(keys_dir)
    assert key is not None, "the example's build makes the signing key"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with store.engine.connect() as conn:
        last = conn.execute(select(t.ledger.c.seq, t.ledger.c.hash).order_by(t.ledger.c.seq.desc()).limit(1)).first()
    seq, prev = (int(last.seq), str(last.hash)) if last else (0, ledger.GENESIS)
    at = time.time() - count
    done = 0
    while done < count:
        rows: list[dict[str, Any]] = []
        for _ in range(min(CHUNK, count - done)):
            seq += 1
            at += 1.0 + (seq % 7) / 10
            payload = {"n": seq, "release": f"r{seq % 97:04d}", "note": "bench"}
            fields = {"seq": seq, "at": at, "actor": f"user{seq % 5}@example", "action": ACTIONS[seq % len(ACTIONS)],
                      "environment": ENVIRONMENTS[seq % 2], "service": SERVICES[seq % len(SERVICES)],
                      "subject": f"dep{seq}"}
            digest = ledger.entry_hash(**fields, payload=payload, prev_hash=prev)  # type: ignore[arg-type]
            rows.append({**fields, "payload_json": canonical_json(payload), "prev_hash": prev, "hash": digest})
            prev = digest
        halves = [rows[: len(rows) // 2], rows[len(rows) // 2:]]
        signed = pool.map(_sign_all, [pem, pem], [[r["hash"] for r in half] for half in halves])
        for half, signatures in zip(halves, signed, strict=True):
            for row, signature in zip(half, signatures, strict=True):
                row["signature"] = signature
        with store.begin() as conn:
            conn.execute(t.ledger.insert(), rows)
        done += len(rows)
    return time.perf_counter() - started


def add_deployments(project: Project, count: int) -> None:
    """`count` deployments (two steps and an activation each) of the example's one release."""
    store = project.store
    key = load_key(project.paths.keys)
    assert key is not None
    release = new_release(key=key, project=project.spec.project, service="web", artifact_digest="sha256:" + "a" * 64,
                          spec={"command": ["python", "app.py"]}, config={"values": {}}, actor="bench")
    with store.begin() as conn:
        store.insert_release(conn, release)
    started = time.time() - count
    deployments, steps, activations = [], [], []
    for number in range(count):
        env, svc = ENVIRONMENTS[number % 2], SERVICES[number % len(SERVICES)]
        dep = f"b{number:011d}"
        deployments.append({"id": dep, "environment": env, "service": svc, "kind": "deploy", "from_release": None,
                            "to_release": release.id, "strategy": "blue-green", "params_json": "{}",
                            "actor": "bench", "started_at": started + number})
        steps += [{"deployment_id": dep, "seq": 1, "name": "start", "status": "started", "detail_json": "{}",
                   "at": started + number},
                  {"deployment_id": dep, "seq": 2, "name": "finish", "status": "done",
                   "detail_json": '{"outcome":"succeeded"}', "at": started + number + 0.5}]
        activations.append({"environment": env, "service": svc, "release_id": release.id, "deployment_id": dep,
                            "params_json": "{}", "at": started + number + 0.5})
    with store.begin() as conn:
        conn.execute(t.deployments.insert(), deployments)
        conn.execute(t.deployment_steps.insert(), steps)
        conn.execute(t.activations.insert(), activations)


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median milliseconds of `repeat` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def cli_ms(example: ExampleProject, repeat: int, *args: str) -> float:
    return timed(lambda: example.ingot(*args, check=True, timeout=900), repeat)[0]


# ---- the old code, as the baseline -------------------------------------------------------------------
def old_audit_log(store: Store, limit: int) -> list[ledger.LedgerEntry]:
    return ledger.entries(store, environment="production")[-limit:]


def old_history(project: Project, limit: int) -> int:
    rows = 0
    for dep in project.store.deployments("production", None, limit):
        project.store.get_release(dep.to_release)
        history = project.store.activation_history(dep.environment, dep.service)
        project.store.deployment_outcome(dep.id)
        rows += bool(history)
    return rows


def read_only(store: Store) -> int:
    """The floor of any check in Python: only reading the columns the chain check reads, nothing computed."""
    columns = [t.ledger.c[name] for name in ("seq", "at", "actor", "action", "environment", "service", "subject",
                                             "payload_json", "prev_hash", "hash")]
    count = 0
    with store.engine.connect() as conn:
        for part in conn.execute(select(*columns, t.ledger.c.signature.isnot(None))
                                 .order_by(t.ledger.c.seq)).partitions(20_000):
            count += len(part)
    return count


def old_verify(store: Store, trusted: str, sample: int) -> int:
    """The old chain check (each payload decoded and re-encoded, each signature verified) on `sample` entries."""
    prev, checked = ledger.GENESIS, 0
    for e in ledger.entries(store, limit=sample):
        digest = ledger.entry_hash(seq=e.seq, at=e.at, actor=e.actor, action=e.action, environment=e.environment,
                                   service=e.service, subject=e.subject, payload=e.payload, prev_hash=e.prev_hash)
        assert e.prev_hash == prev and digest == e.hash
        assert not e.signature or signature_valid(trusted, e.signature, ledger.signed_head(e.hash))
        prev, checked = e.hash, checked + 1
    return checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=1000, help="entries appended for the incremental verify")
    parser.add_argument("--sample", type=int, default=20_000, help="entries the old verify is timed on")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default="bench/results/ledger.json")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="build in this directory, or measure what an earlier run built there (building "
                             "1M entries takes 10-15 minutes on 2 loaded cores)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = args.reuse or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ingot-ledger-bench-")))
        pool = stack.enter_context(ProcessPoolExecutor(2))
        reused = (tmp / "hello" / "ingot.yaml").exists()
        if reused:
            example = ExampleProject(tmp / "hello", 0, _project="hello")
        else:
            tmp.mkdir(parents=True, exist_ok=True)
            example = make_example(tmp)
        example.env["INGOT_HEAL_INTERVAL"] = "0"
        if not reused:
            example.ingot("build", check=True)  # the signing key, the pin, a release
        project = open_project(example.root / "ingot.yaml")
        store = project.store
        build_s = 0.0
        if not reused:
            build_s = append_bulk(store, project.paths.keys, args.entries, pool)
            add_deployments(project, args.entries // 20)
        trusted = public_key_text(load_key(project.paths.keys))  # type: ignore[arg-type]
        with store.engine.connect() as conn:
            total = conn.execute(select(t.ledger.c.seq).order_by(t.ledger.c.seq.desc()).limit(1)).scalar_one()
        size = os.path.getsize(example.state / "state.db") >> 20
        print(f"{'reused' if reused else 'built'} {total} entries and {args.entries // 20} deployments "
              f"({build_s:.1f}s), database {size} MiB")
        rows: list[dict[str, Any]] = []

        def row(what: str, cli: float | None, now: float, before: float | None, target: str, **more: Any) -> None:
            rows.append({"measure": what, "cli_ms": round(cli, 1) if cli is not None else None,
                         "in_process_ms": round(now, 2),
                         "old_in_process_ms": round(before, 1) if before is not None else None,
                         "speedup": round(before / now, 1) if before else None, "target": target, **more})

        now, got = timed(lambda: ledger.latest(store, limit=20, environment="production"), args.repeat)
        before, old = timed(lambda: old_audit_log(store, 20), 1)
        assert [e.seq for e in got] == [e.seq for e in old], "the new read returns what the old one did"
        row("audit log --limit 20", cli_ms(example, args.repeat, "audit", "log", "--limit", "20", "--env",
                                           "production"), now, before, "<= 50 ms in process")
        now, hist = timed(lambda: operations.history(project, "production", None, 20), args.repeat)
        before, _ = timed(lambda: old_history(project, 20), 1)
        row("history --limit 20", cli_ms(example, args.repeat, "history", "--limit", "20", "--env", "production"),
            now, before, "<= 50 ms in process")
        assert len(hist) == 20

        full_ms, report = timed(lambda: ledger.check_chain(store, trusted, require_signed=True), 1)
        assert report.problem is None and report.checked == total, report
        workers = ledger._workers
        ledger._workers = lambda: 1  # type: ignore[assignment]  # the same check in one pass, one process
        one_pass_ms, _ = timed(lambda: ledger.check_chain(store, trusted, require_signed=True), 1)
        ledger._workers = workers  # type: ignore[assignment]
        old_ms, sampled = timed(lambda: old_verify(store, trusted, args.sample), 1)
        old_rate = sampled / (old_ms / 1000)
        rate = total / (full_ms / 1000)
        floor_ms, _ = timed(lambda: read_only(store), 1)
        full_cli = cli_ms(example, 1, "audit", "verify", "--full")  # deep: also SQLite's integrity_check
        integrity_ms, _ = timed(lambda: store.integrity_problems(), 1)
        quick_ms, _ = timed(lambda: store.integrity_problems(quick=True), 1)
        row("audit verify --full", full_cli, full_ms, old_ms * total / sampled, ">= 300k entries/s",
            entries_per_s=round(rate), old_entries_per_s=round(old_rate), workers=ledger._workers(),
            one_pass_entries_per_s=round(total / (one_pass_ms / 1000)),
            read_only_entries_per_s=round(total / (floor_ms / 1000)), integrity_check_ms=round(integrity_ms),
            quick_check_ms=round(quick_ms))

        point = checkpoint.verified_path(project.paths.root)
        start, refused = checkpoint.last_verified(point, trusted, project.spec.project)
        assert refused is None and start is not None and start[0] == total, (start, refused)
        append_bulk(store, project.paths.keys, args.new, pool)
        now, inc = timed(lambda: ledger.check_chain(store, trusted, require_signed=True, start=start), args.repeat)
        assert inc.problem is None and inc.checked == args.new, inc
        one_ms, verified = timed(lambda: operations.audit_verify(project), 1)  # no deep checks; moves the point
        assert verified.ok and verified.entries_checked == args.new, verified.problems
        append_bulk(store, project.paths.keys, args.new, pool)
        inc_cli = cli_ms(example, 1, "audit", "verify")
        row(f"audit verify, {args.new} new", inc_cli, now, full_ms, "<= 100 ms in process",
            audit_verify_op_ms=round(one_ms, 1))
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print_table(f"ledger at {total:,} entries (medians of {args.repeat}; old = the code before, same run)", rows)
        write_json(args.json, {"entries": total, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
                               "deployments": args.entries // 20, "build_s": round(build_s, 1),
                               "database_mib": os.path.getsize(example.state / "state.db") >> 20,
                               "results": rows, "at": time.time()})
        print(json.dumps({"json": args.json}))
        store.close()


if __name__ == "__main__":
    main()
