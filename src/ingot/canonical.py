"""Canonical JSON and hashing: the one way ingot turns data into bytes it hashes or signs."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def content_digest(data: Any) -> str:
    return "sha256:" + sha256_hex(canonical_json(data))
