"""Webhooks told about deploys (spec `notify`): POSTed JSON, signed, retried with backoff, in the background.

The body has a Slack-compatible `text` and the same facts as fields. It is signed with HMAC-SHA256 in
`X-Ingot-Signature: sha256=<hex>` (over the exact body bytes), keyed by the project's webhook key
(`keys/webhook.key` in the state directory, made on first use, never in the store) or, when the entry
gives `key: {secret: NAME}`, by that ingot secret. The agent delivers: a deploy hands it the
notification and goes on, so a slow or dead receiver can never block or fail a deploy. Every attempt
is in the ledger (`notify.delivery`: attempt, status or error), naming the URL only when the spec
wrote it out; one that came from a secret is named by the secret.

A delivery not yet final is kept in the state's spool (`notify/<id>.json`, 0600: the spec's entry,
the facts and the next attempt; a URL from a secret stays its name), so an agent stopped or killed
while a receiver is down or slow picks it up where it was when it next starts, instead of dropping it.
An attempt whose answer was lost with the agent is made again: receivers may see one notification
twice and can tell by its `deployment` and `event`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ingot.atomic import write_atomically
from ingot.httpclients import tls_context
from ingot.spec.models import NotifySpec, SecretRef

SIGNATURE_HEADER = "X-Ingot-Signature"
KEY_FILE = "webhook.key"
SPOOL_DIR = "notify"
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


@dataclass(frozen=True)
class Pending:
    """A delivery in the spool: what to send, and the attempt to make next."""

    id: str
    environment: str
    service: str
    actor: str
    entry: NotifySpec
    facts: dict[str, Any]
    next_attempt: int = 1


class Spool:
    """Deliveries not yet final, one file each, rewritten atomically as their attempts are made."""

    def __init__(self, root: Path) -> None:
        self.dir = root / SPOOL_DIR

    def add(self, environment: str, service: str, actor: str, entry: NotifySpec,
            facts: Mapping[str, Any]) -> Pending:
        pending = Pending(uuid.uuid4().hex, environment, service, actor, entry, dict(facts))
        self._write(pending)
        return pending

    def advance(self, pending: Pending, next_attempt: int) -> None:
        self._write(Pending(pending.id, pending.environment, pending.service, pending.actor, pending.entry,
                            pending.facts, next_attempt))

    def done(self, pending: Pending) -> None:
        (self.dir / f"{pending.id}.json").unlink(missing_ok=True)

    def pending(self) -> Iterator[Pending]:
        """What is left from before, oldest first; an unreadable file is set aside (renamed `.bad`) and logged."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                raw = json.loads(path.read_text())
                yield Pending(raw["id"], raw["environment"], raw["service"], raw["actor"],
                              NotifySpec.model_validate(raw["entry"]), raw["facts"], int(raw["next_attempt"]))
            except Exception as exc:  # a torn or hand-edited file must not stop the rest
                log.warning("a spooled webhook delivery %s is unreadable (%s): set aside", path.name, exc)
                path.rename(path.with_suffix(".bad"))

    def _write(self, pending: Pending) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = {"id": pending.id, "environment": pending.environment, "service": pending.service,
                "actor": pending.actor, "entry": pending.entry.model_dump(mode="json"), "facts": pending.facts,
                "next_attempt": pending.next_attempt}
        write_atomically(self.dir / f"{pending.id}.json", json.dumps(body, sort_keys=True))


async def deliver(entry: NotifySpec, facts: Mapping[str, Any], key: bytes, secret_value: SecretValue,
                  record: Record, *, first_attempt: int = 1,
                  attempted: Callable[[int], None] | None = None) -> bool:
    """POST the notification to `entry`, retrying with backoff up to its attempts; each attempt recorded.
    Starts at `first_attempt` (a spooled delivery resumed); `attempted(n)` is told of each failed attempt
    that is not the last. Returns whether it was delivered (a 2xx answer)."""
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
    async with httpx.AsyncClient(timeout=entry.timeout, trust_env=False, verify=tls_context()) as client:
        for attempt in range(max(1, first_attempt), entry.attempts + 1):
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
                if attempted is not None:
                    attempted(attempt)
                await asyncio.sleep(min(BACKOFF_CAP, 2.0 ** (attempt - 1)))
    return False
