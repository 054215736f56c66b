"""ingot.yaml: the models, the loader that reports FILE:LINE problems, and the JSON Schema."""

from ingot.spec.durations import parse_duration
from ingot.spec.loader import SpecError, load_spec, parse_spec
from ingot.spec.models import (
    AnalysisSpec,
    EnvironmentSpec,
    HealthSpec,
    LoadedSpec,
    RouterSpec,
    SecuritySpec,
    ServiceSpec,
    Spec,
    StrategySpec,
    StrategyStep,
    deep_merge,
)
from ingot.spec.schema import json_schema

__all__ = [
    "AnalysisSpec",
    "EnvironmentSpec",
    "HealthSpec",
    "LoadedSpec",
    "RouterSpec",
    "SecuritySpec",
    "ServiceSpec",
    "Spec",
    "SpecError",
    "StrategySpec",
    "StrategyStep",
    "deep_merge",
    "json_schema",
    "load_spec",
    "parse_duration",
    "parse_spec",
]
