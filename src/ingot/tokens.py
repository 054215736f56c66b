"""The API's bearer tokens: named, scoped, compared in constant time.

Two kinds, both in the keys directory (0700):
- the *default* token (`api-token`, 0600): made on first use, printed by `ingot token show`, admin scope.
  It is kept as it is, not hashed, so that the operator on the machine can print it again (the dashboard's
  sign-in, `INGOT_TOKEN` for the remote CLI); it guards nothing the keys beside it (the signing key) do not.
- *named* tokens (`ingot token add NAME --scope read|deploy|admin`): the secret is shown once and only its
  SHA-256 is stored (`api-tokens.json`, 0600). A token is 256 random bits, so a plain hash is enough: there is
  nothing to guess that a slow hash would protect.
A token's name is who the API records as the actor of what it does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ingot.errors import UserInputError

TOKEN_FILE = "api-token"
NAMED_FILE = "api-tokens.json"
DEFAULT_NAME = "default"
# Each scope includes the ones before it.
SCOPES = ("read", "deploy", "admin")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Token:
    name: str
    scope: str
    created: str = ""

    def allows(self, needed: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


def token_path(keys_dir: Path) -> Path:
    return keys_dir / TOKEN_FILE


def load_or_create_token(keys_dir: Path) -> str:
    path = token_path(keys_dir)
    if path.exists():
        return path.read_text().strip()
    return _write(keys_dir, TOKEN_FILE, secrets.token_urlsafe(32) + "\n").strip()


def ensure_some_token(keys_dir: Path) -> None:
    """At `ingot serve`: make the default token unless some token exists (it may have been revoked on purpose
    in favour of named ones)."""
    if not token_path(keys_dir).exists() and not _named(keys_dir):
        load_or_create_token(keys_dir)


def rotate_token(keys_dir: Path) -> str:
    """A new default token; the old one stops working at once (the server reads the file on each check)."""
    return _write(keys_dir, TOKEN_FILE, secrets.token_urlsafe(32) + "\n").strip()


def authenticate(keys_dir: Path, presented: str | None) -> Token | None:
    """The token `presented` is, or None. Every stored token is compared, in constant time."""
    if not presented:
        return None
    found: Token | None = None
    path = token_path(keys_dir)
    if path.exists() and hmac.compare_digest(presented.encode(), path.read_text().strip().encode()):
        found = Token(DEFAULT_NAME, "admin")
    digest = _digest(presented)
    for entry in _named(keys_dir):
        if hmac.compare_digest(digest, str(entry.get("sha256", ""))) and found is None:
            found = Token(str(entry["name"]), str(entry["scope"]), str(entry.get("created", "")))
    return found


def token_matches(keys_dir: Path, presented: str | None) -> bool:
    return authenticate(keys_dir, presented) is not None


def add_token(keys_dir: Path, name: str, scope: str) -> str:
    """Make a named token and return its secret (shown once: only its hash is kept)."""
    if not _NAME.fullmatch(name) or name == DEFAULT_NAME:
        raise UserInputError(f"token name {name!r}: expected lower-case letters, digits, '.', '_' or '-' (at most "
                             f"64, starting with a letter or digit), and not {DEFAULT_NAME!r}")
    if scope not in SCOPES:
        raise UserInputError(f"--scope {scope}: expected one of {', '.join(SCOPES)}")
    entries = _named(keys_dir)
    if any(e.get("name") == name for e in entries):
        raise UserInputError(f"there is a token named {name!r} already: revoke it first ('ingot token revoke {name}')")
    secret = secrets.token_urlsafe(32)
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    entries.append({"name": name, "scope": scope, "sha256": _digest(secret), "created": created})
    _save_named(keys_dir, entries)
    return secret


def list_tokens(keys_dir: Path) -> list[Token]:
    found = [Token(DEFAULT_NAME, "admin")] if token_path(keys_dir).exists() else []
    return found + [Token(str(e["name"]), str(e["scope"]), str(e.get("created", ""))) for e in _named(keys_dir)]


def revoke_token(keys_dir: Path, name: str) -> None:
    """Remove a token; it stops working at once. Revoking `default` removes its file."""
    if name == DEFAULT_NAME:
        path = token_path(keys_dir)
        if not path.exists():
            raise UserInputError(f"there is no {DEFAULT_NAME!r} token")
        path.unlink()
        return
    entries = _named(keys_dir)
    kept = [e for e in entries if e.get("name") != name]
    if len(kept) == len(entries):
        raise UserInputError(f"there is no token named {name!r} ('ingot token list' shows them)")
    _save_named(keys_dir, kept)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _named(keys_dir: Path) -> list[dict[str, str]]:
    path = keys_dir / NAMED_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: unreadable ({exc}); fix or remove it") from None
    return [dict(e) for e in data.get("tokens", []) if isinstance(e, dict) and e.get("scope") in SCOPES]


def _save_named(keys_dir: Path, entries: list[dict[str, str]]) -> None:
    _write(keys_dir, NAMED_FILE, json.dumps({"version": 1, "tokens": entries}, indent=1) + "\n")


def _write(keys_dir: Path, name: str, text: str) -> str:
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    path = keys_dir / name
    # Written beside, then renamed over: a reader sees the old file or the new one, never half of one.
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return text
