"""JSON Schema of ingot.yaml for editors (YAML language servers read JSON Schema)."""

from __future__ import annotations

from typing import Any

from ingot.spec.models import Spec

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """Draft 2020-12 schema of ingot.yaml, generated from the models so the two cannot drift apart."""
    schema = Spec.model_json_schema(mode="validation")
    _keys_by_name(schema)
    _overrides_are_partial_services(schema)
    _environments_may_be_empty(schema)
    return {"$schema": DIALECT, **schema, "title": "ingot.yaml"}


def _keys_by_name(node: Any) -> None:
    """pydantic describes constrained dict keys with patternProperties, which lets any other key
    through unchecked; propertyNames makes editors flag a bad service or environment name."""
    if isinstance(node, dict):
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1 and "properties" not in node:
            ((pattern, values),) = patterns.items()
            del node["patternProperties"]
            node["propertyNames"] = {"pattern": pattern}
            node["additionalProperties"] = values
        for value in node.values():
            _keys_by_name(value)
    elif isinstance(node, list):
        for value in node:
            _keys_by_name(value)


def _environments_may_be_empty(schema: dict[str, Any]) -> None:
    """`staging:` with nothing after it (YAML null) is accepted as an environment without overrides."""
    environments = schema.get("properties", {}).get("environments")
    if environments is not None and "additionalProperties" in environments:
        environments["additionalProperties"] = {
            "anyOf": [environments["additionalProperties"], {"type": "null"}]
        }


def _overrides_are_partial_services(schema: dict[str, Any]) -> None:
    """An override may set any service field. Every ServiceSpec field has a default, so the service
    schema itself describes a valid override (the model types them as free-form mappings)."""
    definitions = schema.get("$defs", {})
    services = definitions.get("EnvironmentSpec", {}).get("properties", {}).get("services")
    if services is not None and "ServiceSpec" in definitions:
        services["additionalProperties"] = {"anyOf": [{"$ref": "#/$defs/ServiceSpec"}, {"type": "null"}]}
