"""A service's `resources` (Kubernetes quantities) in the container engine's units."""

from __future__ import annotations

from ingot.runtimes.base import Resources


def test_quantities_become_engine_units() -> None:
    assert Resources.from_spec(None) == Resources()
    assert Resources.from_spec({"limits": {"memory": "1G", "cpu": "0.1"}}) == Resources(
        memory_bytes=10**9, nano_cpus=100_000_000)
    assert Resources.from_spec({"limits": {"cpu": "2"}, "requests": {"cpu": "1m", "memory": "64Ki"}}) == Resources(
        nano_cpus=2 * 10**9, cpu_shares=2, memory_reservation_bytes=65536)  # shares never below 2, as the kubelet
    # ephemeral-storage is not an engine limit here: nothing is set for it.
    assert Resources.from_spec({"limits": {"ephemeral-storage": "1Gi"}}) == Resources()
