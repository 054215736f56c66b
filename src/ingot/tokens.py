"""The API's bearer token: made on first use, kept in a 0600 file, compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "api-token"


def token_path(keys_dir: Path) -> Path:
    return keys_dir / TOKEN_FILE


def load_or_create_token(keys_dir: Path) -> str:
    path = token_path(keys_dir)
    if path.exists():
        return path.read_text().strip()
    return _write(keys_dir, secrets.token_urlsafe(32))


def rotate_token(keys_dir: Path) -> str:
    """A new token; the old one stops working at once (the server reads the file on each check)."""
    return _write(keys_dir, secrets.token_urlsafe(32))


def token_matches(keys_dir: Path, presented: str | None) -> bool:
    path = token_path(keys_dir)
    if not presented or not path.exists():
        return False
    return hmac.compare_digest(presented.encode(), path.read_text().strip().encode())


def _write(keys_dir: Path, token: str) -> str:
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    path = token_path(keys_dir)
    # Written beside, then renamed over: a reader sees the old token or the new one, never half of one.
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.replace(tmp, path)
    return token
