"""Prometheus text for `/metrics`: counts from the ledger, live numbers from the agent's routers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text

from ingot import operations
from ingot.project import Project

OUTCOMES = {"finish": "succeeded", "fail": "failed", "abort": "aborted", "superseded": "superseded",
            "interrupted": "interrupted"}


def render_metrics(project: Project) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(project))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Snapshot(Collector):
    """Everything read afresh at each scrape: the ledger is the record, the routers the live numbers."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def collect(self) -> Iterator[Metric]:
        actions, failed_analyses = self._ledger_counts()
        deployments = CounterMetricFamily("ingot_deployments", "Deployments finished, by kind and outcome",
                                          labels=["kind", "outcome"])
        for action, count in sorted(actions.items()):
            kind, _, end = action.partition(".")
            if end in OUTCOMES and kind in ("deploy", "rollback", "promote", "recover"):
                deployments.add_metric([kind, OUTCOMES[end]], count)
        yield deployments
        yield CounterMetricFamily("ingot_rollbacks", "Rollbacks started", value=actions.get("rollback.start", 0))
        yield CounterMetricFamily("ingot_analysis_failures", "Analysis verdicts that failed a rollout",
                                  value=failed_analyses)
        yield CounterMetricFamily("ingot_drift_findings", "Drift findings recorded",
                                  value=actions.get("drift.found", 0))
        yield CounterMetricFamily("ingot_drift_repairs", "Drift repairs made (by reconcile or self-heal)",
                                  value=sum(n for a, n in actions.items() if a.startswith("drift.repair")))
        yield from self._live()

    def _ledger_counts(self) -> tuple[Counter[str], int]:
        with self.project.store.engine.connect() as conn:
            actions = Counter({str(a): int(n) for a, n in
                               conn.execute(text("SELECT action, count(*) FROM ledger GROUP BY action"))})
            decision = ("CAST(payload_json AS json) -> 'decision' ->> 'action'" if conn.dialect.name == "postgresql"
                        else "json_extract(payload_json, '$.decision.action')")
            failed = conn.execute(text(
                f"SELECT count(*) FROM ledger WHERE action LIKE '%.analysis' AND {decision} = 'fail'")).scalar_one()
        return actions, int(failed)

    def _live(self) -> Iterator[Metric]:
        labels = ["environment", "service", "release"]
        requests = CounterMetricFamily("ingot_router_requests", "Requests the router answered, per release",
                                       labels=labels)
        errors = CounterMetricFamily("ingot_router_errors", "5xx answers (the app's or the router's), per release",
                                     labels=labels)
        p99 = GaugeMetricFamily("ingot_router_latency_p99_seconds", "p99 latency over the router's recent window",
                                labels=labels)
        weight = GaugeMetricFamily("ingot_router_weight_percent", "Share of traffic sent to a release",
                                   labels=labels)
        instances = GaugeMetricFamily("ingot_instances", "Instances tracked, by release and state",
                                      labels=[*labels, "state"])
        report: dict[str, Any] = operations.status(self.project, None)
        for item in report["services"]:
            where = [item["environment"], item["service"]]
            for release, stats in item["router"]["stats"].items():
                requests.add_metric([*where, release], stats.get("requests", 0))
                errors.add_metric([*where, release], stats.get("errors_5xx", 0))
                p99.add_metric([*where, release], float(stats.get("p99_ms", 0.0)) / 1000.0)
            for release, percent in item["router"]["weights"].items():
                weight.add_metric([*where, release], percent)
            states = Counter((i["release"], i["state"]) for i in item["instances"])
            for (release, state), count in sorted(states.items()):
                instances.add_metric([*where, release, state], count)
        yield from (requests, errors, p99, weight, instances)
