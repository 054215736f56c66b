"""Release identity and signing.

A release is service + artifact digest + config snapshot digest + effective spec digest. Its id is
derived from exactly that content, so the same inputs always name the same release, and it is
signed with the project's ed25519 key (see ingot.signing) so that a forged or altered row is told
before anything starts from it, and by `ingot audit verify`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ingot.canonical import canonical_json, content_digest, sha256_hex
from ingot.signing import KEY_FILE, load_or_create_key, public_key_text, sign, signature_valid
from ingot.store import ReleaseRow

__all__ = ["KEY_FILE", "load_or_create_key", "new_release", "public_key_text", "release_id", "verify_release"]


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
    return replace(unsigned, signature=sign(key, signed_content(unsigned)))


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
    if not signature_valid(trusted_public_key, release.signature, signed_content(release)):
        return "its signature does not verify"
    return None
