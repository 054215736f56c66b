"""Images a cluster can pull: built by the local engine, pushed to the target's registry, run by digest.

A node pulls from a registry, never from this machine's engine, so a build for a Kubernetes target is
pushed and its artifact is the pullable reference `registry/path/project-service@sha256:<digest>`, with
the digest the registry answered. A pinned `image: repo@sha256:...` is taken as it is: the cluster pulls
it, whether or not this machine has it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from ingot.errors import OperationFailed

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
PUSHED = "pushed:{image}:{repository}"  # the artifacts table's input key: this image is in that repository


def is_cluster_image(artifact: str) -> bool:
    """A release artifact that is a pullable `repo@sha256:...` reference (a Kubernetes target's)."""
    name, at, digest = artifact.partition("@")
    return bool(name and at and DIGEST.fullmatch(digest))


def repository(registry: str, project: str, service: str) -> str:
    return f"{registry.rstrip('/')}/{project}-{service}"


def push(engine: Any, image_id: str, repo: str, on_output: Callable[[str], None]) -> str:
    """Tag `image_id` in `repo` and push it; the pullable `repo@sha256:...` the registry answered."""
    tag = image_id.removeprefix("sha256:")[:12]
    engine.tag_image(image_id, repo, tag)
    try:
        chunks = engine.client.api.push(repo, tag=tag, stream=True, decode=True)
        digest = pushed_digest(chunks, on_output)
    except OperationFailed:
        raise
    except Exception as exc:  # the engine's client raises its own errors and OSErrors alike
        raise OperationFailed(f"pushing {repo}:{tag} failed: {exc}", details=_hint(repo)) from exc
    if digest is None:
        # Not every engine reports the digest in the push stream; the image now knows its repository digest.
        attrs = engine.client.images.get(image_id).attrs
        digest = next((d.split("@", 1)[1] for d in attrs.get("RepoDigests") or []
                       if d.split("@", 1)[0].removeprefix("docker.io/") == repo), None)
    if digest is None:
        raise OperationFailed(f"pushed {repo}:{tag}, but the registry reported no digest", details=_hint(repo))
    return f"{repo}@{digest}"


def pushed_digest(chunks: Iterable[dict[str, Any]], on_output: Callable[[str], None]) -> str | None:
    """The digest from a push's progress messages; an error message fails the push."""
    digest = None
    for chunk in chunks:
        if chunk.get("error"):
            raise OperationFailed(f"the push failed: {str(chunk['error']).strip()}")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and DIGEST.fullmatch(str(aux.get("Digest", ""))):
            digest = str(aux["Digest"])
        status = chunk.get("status")
        if status:
            on_output(str(status))
            found = DIGEST.search(str(status))
            if "digest:" in str(status) and found:
                digest = found.group(0)
    return digest


def _hint(repo: str) -> list[str]:
    return [f"the cluster pulls from {repo.split('/', 1)[0]}: it must be reachable from here to push, with "
            "the engine logged in (docker login / podman login) and, for a plain-HTTP registry, listed as "
            "insecure in the engine's configuration"]
