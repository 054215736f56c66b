"""Configuration sources: config values kept outside ingot (etcd), read at deploy time.

A source only ever *reads*: the keys a service lists under `config:` are looked up in it (key = prefix + NAME)
when a release is made, and the values are snapshotted into the release exactly as values of ingot's own
config store are. A change in the source is therefore a new release on the next deploy, and a rollback brings
back the values the older release took; running instances never see the source. Secrets are never read from a
source: they stay in ingot's encrypted store.

One small interface, `ConfigSource.read(names) -> SourceRead`, with two implementations: `etcd` (tested
against a real etcd) and `consul` (Consul KV; tested only against a stand-in that answers as Consul's
documentation says, no Consul server being installable here).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from ingot.errors import OperationFailed
from ingot.spec.models import ConfigSourceSpec, Spec


class SourceUnavailable(OperationFailed):
    """No endpoint of the source answered: the operation fails (exit 1), nothing is changed."""


@dataclass(frozen=True)
class SourceRead:
    """What one read of a source found: values of the names that exist, all at one revision."""

    kind: str  # etcd | consul
    endpoints: tuple[str, ...]
    prefix: str
    revision: int  # the source's revision the values were read at (etcd: the cluster's header revision)
    values: dict[str, str] = field(default_factory=dict)  # NAME -> value, only names the source holds
    versions: dict[str, int] = field(default_factory=dict)  # NAME -> the revision that last changed it

    def key(self, name: str) -> str:
        return self.prefix + name

    def describe(self) -> str:
        return f"{self.kind} ({', '.join(self.endpoints)})"

    def record(self, names: Collection[str] | None = None) -> dict[str, Any]:
        """For the ledger: where values came from and at which revision (never the values themselves)."""
        taken = sorted(self.values if names is None else set(names) & set(self.values))
        return {"kind": self.kind, "endpoints": list(self.endpoints), "prefix": self.prefix,
                "revision": self.revision, "keys": {name: self.versions.get(name) for name in taken}}


class ConfigSource(Protocol):
    kind: str
    endpoints: tuple[str, ...]
    prefix: str

    def read(self, names: Collection[str]) -> SourceRead:
        """The values of `names` the source holds (absent names are left out), read at one revision.

        Raises SourceUnavailable when no endpoint answers, and UserInputError for a value ingot cannot use.
        """
        ...


class EndpointsSource:
    """What both implementations are made of: endpoints tried in order, a key prefix, a per-request timeout."""

    def __init__(self, endpoints: tuple[str, ...], prefix: str, timeout: float = 5.0) -> None:
        self.endpoints = endpoints
        self.prefix = prefix
        self.timeout = timeout


def from_spec(spec: ConfigSourceSpec) -> ConfigSource:
    from ingot.config_sources.consul import ConsulSource
    from ingot.config_sources.etcd import EtcdSource

    if spec.consul is not None:
        return ConsulSource(tuple(spec.consul.endpoints), spec.consul.prefix, spec.consul.timeout)
    assert spec.etcd is not None  # the spec refuses a config_source without exactly one kind
    return EtcdSource(tuple(spec.etcd.endpoints), spec.etcd.prefix, spec.etcd.timeout)


def for_environment(spec: Spec, environment: str) -> ConfigSource | None:
    """The config source the spec gives `environment`, if any."""
    env = spec.environments.get(environment)
    if env is None or env.config_source is None:
        return None
    return from_spec(env.config_source)
