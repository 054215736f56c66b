"""A strict pydantic model of the Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1), for validating
ingot's rendered routes offline.

HTTPRoute is a CRD, so the official Kubernetes schemas that kubernetes-validate carries do not have it.
This model is written from the Gateway API v1 reference (standard channel): the fields ingot renders and
their constraints (name patterns, lengths, list sizes, weight and port ranges, core-group Service
backends needing a port). Unknown fields are refused, as a structural CRD schema prunes or rejects them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
GROUP = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
KIND = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"

ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=253)]
Namespace = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL)]
SectionName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
Group = Annotated[str, StringConstraints(max_length=253, pattern=GROUP)]
Kind = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=KIND)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ParentReference(_Strict):
    group: Group = "gateway.networking.k8s.io"
    kind: Kind = "Gateway"
    namespace: Namespace | None = None
    name: ObjectName
    sectionName: SectionName | None = None
    port: Port | None = None


class BackendRef(_Strict):
    group: Group = ""
    kind: Kind = "Service"
    name: ObjectName
    namespace: Namespace | None = None
    port: Port | None = None
    weight: Annotated[int, Field(ge=0, le=1_000_000)] = 1

    @model_validator(mode="after")
    def _service_needs_port(self) -> BackendRef:
        # The CRD's CEL rule: "Must have port for Service reference".
        if self.group == "" and self.kind == "Service" and self.port is None:
            raise ValueError("a Service backend needs a port")
        return self


class PathMatch(_Strict):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: Annotated[str, StringConstraints(max_length=1024, pattern=r"^/")] = "/"


class RouteMatch(_Strict):
    path: PathMatch | None = None


class RouteRule(_Strict):
    matches: Annotated[list[RouteMatch], Field(max_length=64)] | None = None
    backendRefs: Annotated[list[BackendRef], Field(max_length=16)] | None = None


class HTTPRouteSpec(_Strict):
    parentRefs: Annotated[list[ParentReference], Field(max_length=32)] | None = None
    hostnames: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=253)]],
                         Field(max_length=16)] | None = None
    rules: Annotated[list[RouteRule], Field(max_length=16)] = Field(default_factory=lambda: [RouteRule()])


class ObjectMeta(_Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    namespace: Namespace
    labels: dict[Annotated[str, StringConstraints(max_length=316)],
                 Annotated[str, StringConstraints(max_length=63)]] | None = None
    annotations: dict[str, str] | None = None


class HTTPRoute(_Strict):
    apiVersion: Literal["gateway.networking.k8s.io/v1"]
    kind: Literal["HTTPRoute"]
    metadata: ObjectMeta
    spec: HTTPRouteSpec
