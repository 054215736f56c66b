"""The check every start goes through: a release runs only if its row verifies against the pinned key.

Process and container instances are started by `Executor.start_instances`, Kubernetes rollouts by
`kube.operations.roll`; both call `refuse_untrusted` first, so a row changed in the database never starts
anywhere. The artifact's digest is verified by the checkout a process runs from
(`ArtifactStore.checkout`); a container or a pod runs from its image digest.
"""

from __future__ import annotations

import contextlib
import logging

from ingot import ledger
from ingot.errors import OperationFailed
from ingot.paths import StatePaths
from ingot.releases import verify_release
from ingot.signing import trusted_key
from ingot.store import ReleaseRow, Store

log = logging.getLogger("ingot.agent")


def refuse_untrusted(store: Store, paths: StatePaths, environment: str, service: str, release: ReleaseRow,
                     actor: str = "ingot-agent") -> None:
    """Raise OperationFailed (and record `release.refused`) unless `release` verifies against the pin."""
    trusted, source = trusted_key(paths.pin, paths.keys)
    problem = verify_release(release, trusted) if trusted else "there is no key to check its signature against"
    if problem is None and release.service != service:
        # Signed, but another service's: it would run with this service's user, secrets and traffic.
        problem = f"it is a release of service {release.service}, not of {service}"
    if problem is None:
        return
    reason = f"release {release.id} of {service} was refused: {problem}"
    with contextlib.suppress(Exception):  # the refusal stands even if it cannot be recorded
        ledger.record(store, actor=actor, action="release.refused", environment=environment,
                      service=service, subject=release.id, payload={"reason": problem, "trusted": source})
    log.error("%s (checked against %s)", reason, source)
    raise OperationFailed(reason, details=[
        f"checked against {source}; nothing was started from it",
        "the release's row was changed in the database since it was signed: 'ingot audit verify' says "
        "what else was; deploy from the spec to make a sound release"])
