"""Release identity and signing.

A release is service + artifact digest + config snapshot digest + effective spec digest. Its id is
derived from exactly that content, so the same inputs always name the same release, and it is
signed with the project's ed25519 key so `ingot audit verify` can tell a forged or altered row.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ingot.canonical import canonical_json, content_digest, sha256_hex
from ingot.store import ReleaseRow

KEY_FILE = "release-signing.ed25519"


def release_id(project: str, service: str, artifact_digest: str, config_digest: str, spec_digest: str) -> str:
    identity = canonical_json(
        {
            "project": project,
            "service": service,
            "artifact": artifact_digest,
            "config": config_digest,
            "spec": spec_digest,
        }
    )
    return sha256_hex(identity)[:12]


def load_or_create_key(keys_dir: Path) -> Ed25519PrivateKey:
    path = keys_dir / KEY_FILE
    if path.exists():
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an ed25519 key")
        return loaded
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created with 0600 from the first byte: never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def public_key_text(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def signed_content(release: ReleaseRow) -> bytes:
    return canonical_json(
        {
            "id": release.id,
            "project": release.project,
            "service": release.service,
            "artifact_digest": release.artifact_digest,
            "config_digest": release.config_digest,
            "spec_digest": release.spec_digest,
            "spec": release.spec,
            "config": release.config,
            "commit": release.commit,
            "created_at": repr(release.created_at),
            "created_by": release.created_by,
        }
    ).encode()


def new_release(
    *,
    key: Ed25519PrivateKey,
    project: str,
    service: str,
    artifact_digest: str,
    spec: dict[str, Any],
    config: dict[str, Any],
    actor: str,
    commit: str | None = None,
) -> ReleaseRow:
    config_digest = content_digest(config)
    spec_digest = content_digest(spec)
    unsigned = ReleaseRow(
        id=release_id(project, service, artifact_digest, config_digest, spec_digest),
        project=project,
        service=service,
        artifact_digest=artifact_digest,
        config_digest=config_digest,
        spec_digest=spec_digest,
        spec=spec,
        config=config,
        commit=commit,
        created_at=time.time(),
        created_by=actor,
        public_key=public_key_text(key),
        signature="",
    )
    signature = base64.b64encode(key.sign(signed_content(unsigned))).decode()
    return replace(unsigned, signature=signature)


def verify_release(release: ReleaseRow, trusted_public_key: str) -> str | None:
    """Return None if the release is intact and signed by the trusted key, else what is wrong."""
    expected_id = release_id(
        release.project, release.service, release.artifact_digest, release.config_digest, release.spec_digest
    )
    if expected_id != release.id:
        return "its id does not match its content"
    if content_digest(release.spec) != release.spec_digest:
        return "its spec snapshot does not match its spec digest"
    if content_digest(release.config) != release.config_digest:
        return "its config snapshot does not match its config digest"
    if release.public_key != trusted_public_key:
        return "it was signed by a key that is not this project's signing key"
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(trusted_public_key))
    try:
        public.verify(base64.b64decode(release.signature), signed_content(release))
    except (InvalidSignature, ValueError):
        return "its signature does not verify"
    return None
