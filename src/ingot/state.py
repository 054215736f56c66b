"""The planner's view of what runs now, read from the store."""

from __future__ import annotations

from ingot.plan import ServiceState
from ingot.store import Store


def service_state(store: Store, environment: str, service: str) -> ServiceState:
    """The planner's view, from the store: live weights and running instances per release."""
    activation = store.current_activation(environment, service)
    weights: tuple[tuple[str, int], ...] = ()
    if activation and activation.release_id:
        weights = ((activation.release_id, 100),)
    counts: dict[str, int] = {}
    for instance in store.live_instances(environment, service):
        if instance.state == "running":
            counts[instance.release_id] = counts.get(instance.release_id, 0) + 1
    return ServiceState(weights=weights, instances=tuple(sorted(counts.items())))
