"""Canary numbers from Prometheus, judged by the same rules as the built-in router's counters.

A query that cannot be answered (Prometheus unreachable, no series yet) is never a pass: it makes the
verdict inconclusive, and the analysis' `inconclusive` policy decides (wait, bounded, or fail).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from string import Template

import httpx

from ingot.analysis import Counters, Thresholds, Verdict, Window, judge
from ingot.spec.models import PrometheusSpec

Query = Callable[[str], float | None]


class Unanswered(Exception):
    """Prometheus could not be asked, or answered with an error."""


def substitute(query: str, values: Mapping[str, str]) -> str:
    """`$deployment`, `$release`, `$service`, `$namespace`, `$interval` in a PromQL query; `$$` is a `$`."""
    return Template(query).safe_substitute(values)


def http_query(url: str, timeout: float = 5.0) -> Query:
    """A function asking Prometheus at `url` for one number (the first sample of an instant query)."""

    def ask(promql: str) -> float | None:
        try:
            response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=timeout)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise Unanswered(f"Prometheus at {url} did not answer: {exc}") from exc
        if body.get("status") != "success":
            raise Unanswered(f"Prometheus at {url} refused the query: {body.get('error', response.status_code)}")
        return first_number(body.get("data") or {})

    return ask


def first_number(data: Mapping[str, object]) -> float | None:
    """The value of an instant query's answer: a scalar, or the first sample of a vector; None if empty."""
    result = data.get("result")
    raw: object = None
    if data.get("resultType") == "scalar" and isinstance(result, list) and len(result) == 2:
        raw = result[1]
    elif isinstance(result, list) and result and isinstance(result[0], dict):
        value = result[0].get("value")
        raw = value[1] if isinstance(value, list) and len(value) == 2 else None
    try:
        number = float(str(raw)) if raw is not None else None
    except ValueError:
        return None
    return None if number is None or math.isnan(number) else number


def sample(spec: PrometheusSpec, ask: Query, values: Mapping[str, str]) -> Window:
    """One window of a Deployment's numbers, shaped as the router's counters would give them.

    No answer to the request count counts as no requests, so the verdict is inconclusive, never a pass.
    """
    counted = ask(substitute(spec.requests, values))
    requests = int(counted) if counted is not None else 0
    rate = ask(substitute(spec.error_rate, values)) if requests else None
    p99 = ask(substitute(spec.p99_ms, values)) if spec.p99_ms and requests else None
    errors = round((rate or 0.0) * requests)
    return Window(Counters(), Counters(requests, errors, p99 or 0.0))


def verdict(spec: PrometheusSpec, ask: Query, canary: Mapping[str, str], stable: Mapping[str, str],
            thresholds: Thresholds) -> Verdict:
    """The canary judged against its thresholds and against stable, from Prometheus."""
    try:
        return judge(sample(spec, ask, canary), sample(spec, ask, stable), thresholds)
    except Unanswered as exc:
        return Verdict("inconclusive", (f"{exc}: nothing can be judged",))
