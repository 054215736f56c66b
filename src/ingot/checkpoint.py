"""Signed checkpoints of the ledger, kept outside the store, against which a cut ledger is told.

A hash chain and its signatures prove that what is there was written by ingot; they cannot prove that
nothing was removed from its end. A checkpoint is the ledger's head at one moment (seq, hash, time),
signed with the project's key, in a file kept apart (another disk, another machine, git): a ledger
shorter than it, or whose entry at its seq differs, was cut or rewritten.

`ingot audit verify` keeps one more, of the newest entry it verified (`ledger.verified` in the state
directory), and the next verify starts from it: the entries after it are checked, and the entry at its
seq must still have its hash. It is a file signed like a checkpoint, not a row in the store, because
whoever can write the database could move a mark kept there past the entries they rewrote. Without the
key, they cannot move this one: one that does not verify against the trusted key is refused (the chain
is then verified in full). Deleting it, or putting back an older genuine one, only makes the next verify
check more entries. A ledger rewritten at or before it, or cut below it, no longer matches it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ingot.atomic import write_atomically
from ingot.canonical import canonical_json
from ingot.errors import UserInputError
from ingot.signing import load_key, public_key_text, sign, signature_valid
from ingot.store import Store
from ingot.store import schema as t

KIND = "ingot-ledger-checkpoint"
FIELDS = ("kind", "project", "seq", "hash", "at")


def _head(store: Store) -> tuple[int, str]:
    with store.engine.connect() as conn:
        row = conn.execute(select(t.ledger.c.seq, t.ledger.c.hash).order_by(t.ledger.c.seq.desc()).limit(1)).first()
    return (int(row.seq), str(row.hash)) if row else (0, "")


def make(store: Store, keys_dir: Path, project: str) -> dict[str, Any]:
    """The ledger's head now, signed; never makes a key (a state with none has nothing signed to protect)."""
    return _signed(keys_dir, project, _head(store))


def _signed(keys_dir: Path, project: str, head: tuple[int, str]) -> dict[str, Any]:
    key = load_key(keys_dir)
    if key is None:
        raise UserInputError(f"no signing key for {project}: nothing to sign a checkpoint with",
                             details=["a deploy makes one (or set INGOT_SIGNING_KEY to the key's file)"])
    seq, digest = head
    body = {"kind": KIND, "project": project, "seq": seq, "hash": digest, "at": time.time()}
    return {**body, "public_key": public_key_text(key), "signature": sign(key, canonical_json(body).encode())}


def write(path: Path, checkpoint: dict[str, Any]) -> None:
    """Atomically: a reader (or a crash) never sees half a checkpoint."""
    write_atomically(path, json.dumps(checkpoint, indent=2, sort_keys=True) + "\n")


def keep(store: Store, keys_dir: Path, project: str, path: Path) -> bool:
    """Write a checkpoint at `path` if the ledger moved since the one there; True if written."""
    seq, head = _head(store)
    try:
        there = json.loads(path.read_text())
        if there.get("seq") == seq and there.get("hash") == head:
            return False
    except (OSError, ValueError, AttributeError):
        pass
    write(path, make(store, keys_dir, project))
    return True


def read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UserInputError(f"--checkpoint {path}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise UserInputError(f"--checkpoint {path}: not a checkpoint ingot wrote (bad JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or not isinstance(data.get("seq"), int):
        raise UserInputError(f"--checkpoint {path}: not a checkpoint ingot wrote ('ingot audit checkpoint')")
    return data


def _refusal(data: dict[str, Any], trusted: str | None, project: str) -> str | None:
    """Why a checkpoint read from a file is not to be trusted, or None."""
    body = {name: data.get(name) for name in FIELDS}
    if trusted is None:
        return "no trusted key to check its signature against"
    if not signature_valid(trusted, data.get("signature"), canonical_json(body).encode()):
        return "its signature does not verify against the trusted key (forged or altered)"
    if data.get("project") != project:
        return f"it is of project {data.get('project')!r}, not {project!r}"
    return None


def problems(store: Store, path: Path, trusted: str | None, project: str) -> list[str]:
    """What is wrong with the ledger measured against the checkpoint at `path`; empty when it holds."""
    data = read(path)
    refused = _refusal(data, trusted, project)
    if refused:
        return [f"checkpoint {path}: {refused}"]
    seq = int(data["seq"])
    if seq == 0:
        return []
    with store.engine.connect() as conn:
        row = conn.execute(select(t.ledger.c.hash).where(t.ledger.c.seq == seq)).first()
    last, _ = _head(store)
    if row is None:
        return [f"the ledger was cut: it ends at entry {last}, but checkpoint {path} (of "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(data['at'])))}) has entry {seq}"]
    if row.hash != data.get("hash"):
        return [f"ledger entry {seq} differs from checkpoint {path}: the ledger was rewritten"]
    return []


# ---- the last verified point ---------------------------------------------------------------------------
VERIFIED_FILE = "ledger.verified"


def verified_path(state_root: Path) -> Path:
    return state_root / VERIFIED_FILE


def last_verified(path: Path, trusted: str | None, project: str) -> tuple[tuple[int, str] | None, str | None]:
    """The (seq, hash) the last verify reached, if the file at `path` is one this project's key signed;
    else why it is refused (None, None when there is none: the first verify, or a state without a key)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"the last verified point {path} cannot be read ({exc}): the ledger was verified in full"
    if not isinstance(data, dict) or data.get("kind") != KIND or not isinstance(data.get("seq"), int) \
            or not isinstance(data.get("hash"), str):
        return None, f"the last verified point {path} is not one ingot wrote: the ledger was verified in full"
    refused = _refusal(data, trusted, project)
    if refused:
        return None, f"the last verified point {path} is refused: {refused}; the ledger was verified in full"
    return ((data["seq"], data["hash"]) if data["seq"] > 0 else None), None


def keep_verified(path: Path, keys_dir: Path, project: str, head: tuple[int, str]) -> bool:
    """Record `head` as the newest entry verified, signed; False when it cannot be (no key, a read-only
    state): the next verify then checks more entries, nothing else."""
    try:
        write(path, _signed(keys_dir, project, head))
    except (UserInputError, OSError):
        return False
    return True
