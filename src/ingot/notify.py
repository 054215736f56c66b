"""Webhooks told about deploys (spec `notify`): POSTed JSON, signed, retried with backoff, in the background.

The body has a Slack-compatible `text` and the same facts as fields. It is signed with HMAC-SHA256 in
`X-Ingot-Signature: sha256=<hex>` (over the exact body bytes), keyed by the project's webhook key
(`keys/webhook.key` in the state directory, made on first use, never in the store) or, when the entry
gives `key: {secret: NAME}`, by that ingot secret. The agent delivers: a deploy hands it the
notification and goes on, so a slow or dead receiver can never block or fail a deploy. Every attempt
is in the ledger (`notify.delivery`: attempt, status or error), naming the URL only when the spec
wrote it out; one that came from a secret is named by the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from ingot.spec.models import NotifySpec, SecretRef

SIGNATURE_HEADER = "X-Ingot-Signature"
KEY_FILE = "webhook.key"
BACKOFF_CAP = 30.0
log = logging.getLogger("ingot.agent")

Record = Callable[[dict[str, Any]], None]
SecretValue = Callable[[str], str]


def event_of(kind: str, outcome: str) -> str:
    """The spec's event a finished operation is: every failure is `failure`; a rollback `rollback`."""
    if outcome != "succeeded":
        return "failure"
    return "rollback" if kind == "rollback" else "deploy"


def webhook_key(keys_dir: Path) -> bytes:
    """The project's webhook signing key (hex text in the file); made 0600 on first use."""
    path = keys_dir / KEY_FILE
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made meanwhile by another process: that one is the key
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip().encode()


def sign(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def message(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body: `text` for Slack-like receivers, then the facts as fields."""
    what = f"{facts['kind']} of {facts['service']} to {facts['release']} in {facts['environment']}"
    text = f"ingot {facts['project']}: {what} {facts['outcome']} (by {facts.get('actor') or 'unknown'})"
    if facts.get("error"):
        text += f": {facts['error']}"
    return {"text": text, **facts}


async def deliver(entry: NotifySpec, facts: Mapping[str, Any], key: bytes, secret_value: SecretValue,
                  record: Record) -> bool:
    """POST the notification to `entry`, retrying with backoff up to its attempts; each attempt recorded.
    Returns whether it was delivered (a 2xx answer)."""
    target = f"secret {entry.url.secret}" if isinstance(entry.url, SecretRef) else entry.url
    base = {"event": facts["event"], "deployment": facts.get("deployment"), "target": target}
    try:
        url = secret_value(entry.url.secret) if isinstance(entry.url, SecretRef) else entry.url
        if isinstance(entry.key, SecretRef):
            key = secret_value(entry.key.secret).encode()
    except Exception as exc:  # a secret not set: recorded, never raised into a deploy
        record({**base, "attempt": 0, "delivered": False, "final": True, "error": str(exc)})
        return False
    body = json.dumps(message(facts), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "ingot", SIGNATURE_HEADER: sign(key, body)}
    async with httpx.AsyncClient(timeout=entry.timeout, trust_env=False) as client:
        for attempt in range(1, entry.attempts + 1):
            final = attempt == entry.attempts
            try:
                answer = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                # Said by type only: an httpx message may quote the URL, which may be a secret.
                outcome: dict[str, Any] = {"error": type(exc).__name__}
            else:
                outcome = {"status": answer.status_code}
                if answer.is_success:
                    record({**base, "attempt": attempt, "delivered": True, "final": True, **outcome})
                    return True
            record({**base, "attempt": attempt, "delivered": False, "final": final, **outcome})
            if not final:
                await asyncio.sleep(min(BACKOFF_CAP, 2.0 ** (attempt - 1)))
    return False
