"""The ingot.yaml data model: frozen pydantic models, field rules and cross checks.

The models validate themselves, so a spec built in memory (tests, the API) obeys the same rules as one
loaded from a file. The loader adds what only a file has: line numbers and all problems at once.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ingot.addresses import split_address
from ingot.errors import UserInputError
from ingot.spec.durations import DURATION_JSON_SCHEMA, Duration, parse_duration
from ingot.spec.problems import RELATED, RULE_ERROR, Loc, Problem, dotted, problems_from_error
from ingot.spec.quantities import PATTERN as QUANTITY_PATTERN
from ingot.spec.quantities import quantity_value

# Validation context key: the loader runs the cross checks itself (with line numbers, all problems
# reported together), so it asks the models not to run them a second time.
SKIP_CROSS_CHECKS = "ingot_skip_cross_checks"
DEFAULT_ENVIRONMENT = "default"
CONTAINER_RUNTIMES = ("docker", "kubernetes")

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+):[0-9]{1,5}$"
KUBE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # an RFC 1123 label: namespaces, gateways
DEFAULT_VOLUME_SIZE = "1Gi"  # a volume's PersistentVolumeClaim on a cluster, unless target.volume_size says
# A health command runs on the host beside the instance, told which one; on a cluster it is an exec probe
# inside the container, where these name nothing.
HOST_SIDE_VARIABLES = ("INGOT_CONTAINER", "INGOT_INSTANCE_PID")
IMAGE_DIGEST_PATTERN = r"^[^@\s]+@sha256:[0-9a-f]{64}$"
_WILDCARD_HOSTS = {"0.0.0.0", "::", "*", ""}
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
ROUTE_HOST_PATTERN = rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$"
DEFAULT_LISTEN = "127.0.0.1:8080"


def _rule(key: str, detail: str) -> PydanticCustomError:
    """A cross-field rule failure attributed to `key`, so the report points at that key's line."""
    return PydanticCustomError(RULE_ERROR, "{detail}", {"key": key, "detail": detail})


# --- field types -----------------------------------------------------------------------------------


def _check_capability(value: str) -> str:
    if not re.fullmatch(r"^(CAP_)?[A-Z_]+$", value):
        raise ValueError(f"expected a Linux capability name such as NET_BIND_SERVICE, got {value!r}")
    return value.removeprefix("CAP_")


def _check_name(value: str) -> str:
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(
            "must be 1-40 lowercase letters, digits or dashes, starting and ending with a letter "
            f"or digit, got {value!r}"
        )
    return value


def _check_env_var(value: str) -> str:
    if not re.fullmatch(ENV_VAR_PATTERN, value):
        raise ValueError(
            f"must be a valid environment variable name (letters, digits, _; not starting with a digit), "
            f"got {value!r}"
        )
    return value


def _check_kube_name(value: str) -> str:
    if not re.fullmatch(KUBE_NAME_PATTERN, value):
        raise ValueError(
            f"must be a Kubernetes name: 1-63 lowercase letters, digits or dashes, starting and ending with a "
            f"letter or digit, got {value!r}"
        )
    return value


def _check_quantity(value: str) -> str:
    quantity_value(value)
    return value


def _check_http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _check_registry(value: str) -> str:
    # HOST[:PORT][/PATH]: where `ingot build` pushes; no scheme, no tag, no digest.
    if not re.fullmatch(r"[a-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._-]+)*", value):
        raise ValueError(
            f"expected a registry and optional path such as registry.example.com/team (no scheme, tag or "
            f"digest), got {value!r}"
        )
    return value


def _check_http_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    return value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _check_route_host(value: str) -> str:
    value = value.rstrip(".")
    wildcard_of_a_tld = value.startswith("*.") and "." not in value[2:]
    if len(value) > 253 or not re.fullmatch(ROUTE_HOST_PATTERN, value) or wildcard_of_a_tld:
        raise ValueError(f"expected a DNS name such as app.example.com or a wildcard such as *.example.com, "
                         f"got {value!r}")
    return value


def _route_tls(value: Any) -> Any:
    # YAML reads a bare `off` as false.
    if value is False:
        return "off"
    if isinstance(value, dict):
        return value
    if value not in ("auto", "off"):
        raise ValueError(f"expected auto, off, or {{cert: FILE, key: FILE}}, got {value!r}")
    return value


def _check_route_path(value: str) -> str:
    _check_http_path(value)
    if any(c.isspace() or c in "?#" for c in value):
        raise ValueError(f"expected a path prefix such as /api (no spaces, query or fragment), got {value!r}")
    return value


def split_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into host and port; ValueError saying what is expected."""
    return split_address(value)


def _check_listen(value: str) -> str:
    split_listen(value)
    return value


def _split_command(value: Any) -> Any:
    # A string is what people type in a shell; a list is exact. Accept both, keep a list.
    if not isinstance(value, str):
        return value
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split {value!r} into words ({exc}); write it as a list") from None


def _env_text(value: Any) -> Any:
    # YAML turns `DEBUG: 1` or `VERBOSE: yes` into int/bool; environment variables are text anyway.
    if not isinstance(value, dict):
        return value
    return {key: _scalar_text(item) for key, item in value.items()}


def _scalar_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _pause(value: Any) -> Any:
    if value is None or value == "manual":
        return value
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(
            f"expected a duration such as 30s or 5m, or the word manual, got {value!r}"
        ) from None


Name = Annotated[
    str,
    AfterValidator(_check_name),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": 40}),
]
EnvVarName = Annotated[
    str, AfterValidator(_check_env_var), WithJsonSchema({"type": "string", "pattern": ENV_VAR_PATTERN})
]
Listen = Annotated[
    str,
    AfterValidator(_check_listen),
    WithJsonSchema({"type": "string", "pattern": LISTEN_PATTERN, "examples": ["127.0.0.1:8080"]}),
]
# ${PORT} and ${INGOT_...} in command arguments are ingot's; other ${NAME} are left to the program.
OWN_VARIABLE = re.compile(r"\$\{(PORT|INGOT_[A-Z0-9_]+)\}")
INSTANCE_VARIABLES = ("INGOT_RELEASE", "INGOT_SERVICE", "INGOT_ENVIRONMENT", "INGOT_INSTANCE", "INGOT_PROJECT")


def volume_variable(name: str) -> str:
    """The variable that names a volume's place: INGOT_VOLUME_<NAME>, `-` as `_`."""
    return "INGOT_VOLUME_" + name.upper().replace("-", "_")


def instance_variables(volumes: Mapping[str, str], *, port: bool = True) -> set[str]:
    """ingot's own variables an instance gets, which ${NAME} in its command may name."""
    return {*INSTANCE_VARIABLES, *(["PORT"] if port else []), *(volume_variable(v) for v in volumes)}


def expand_own(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """`argv` with ${PORT} and ${INGOT_...} replaced by `values`; any other ${NAME} left as it is (the spec's
    check refuses an ingot-looking name it does not know, so none is left unexpanded by mistake)."""
    return [OWN_VARIABLE.sub(lambda m: values.get(m.group(1), m.group(0)), arg) for arg in argv]


def _check_volume_path(value: str) -> str:
    if not value.startswith("/") or "\0" in value or any(part == ".." for part in value.split("/")):
        raise ValueError(f"expected an absolute path inside the instance such as /data, got {value!r}")
    return value


VolumeName = Name
VolumePath = Annotated[str, AfterValidator(_check_volume_path), WithJsonSchema({"type": "string", "pattern": "^/"})]
Command = Annotated[
    list[str] | None,
    BeforeValidator(_split_command),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}],
            "description": "argv as a list, or a string split like a shell would",
        }
    ),
]
EnvVars = Annotated[
    dict[EnvVarName, str],
    BeforeValidator(_env_text),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": ENV_VAR_PATTERN},
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        }
    ),
]
KubeName = Annotated[
    str,
    AfterValidator(_check_kube_name),
    WithJsonSchema({"type": "string", "pattern": KUBE_NAME_PATTERN, "minLength": 1, "maxLength": 63}),
]
Quantity = Annotated[
    str,
    # YAML reads `cpu: 1` or `cpu: 0.5` as numbers; Kubernetes quantities are text.
    BeforeValidator(_scalar_text),
    AfterValidator(_check_quantity),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": QUANTITY_PATTERN}, {"type": "number", "minimum": 0}]}),
]
ResourceList = dict[Literal["cpu", "memory", "ephemeral-storage"], Quantity]
HttpUrl = Annotated[str, AfterValidator(_check_http_url), WithJsonSchema({"type": "string", "pattern": "^https?://"})]
Registry = Annotated[str, AfterValidator(_check_registry), WithJsonSchema({"type": "string"})]
Pause = Annotated[
    float | Literal["manual"] | None,
    BeforeValidator(_pause),
    WithJsonSchema({"anyOf": [*DURATION_JSON_SCHEMA["anyOf"], {"const": "manual"}, {"type": "null"}]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- models ----------------------------------------------------------------------------------------


class HealthSpec(_Model):
    """How an instance proves it is ready: GET `path` until `healthy_threshold` successes in a row; and,
    while it settles (strategy.min_ready) or is verified, how many failed probes in a row make it unhealthy."""

    path: Annotated[
        str, AfterValidator(_check_http_path), WithJsonSchema({"type": "string", "pattern": "^/"})
    ] = "/healthz"
    # A command health check instead of the HTTP one (workers, `port: null`, have no HTTP to probe): run on
    # the host with the instance's INGOT_* variables, killed after `timeout`; exit 0 is a passing probe.
    command: Command = None
    interval: Duration = Field(default=1.0, gt=0)
    timeout: Duration = Field(default=2.0, gt=0)
    healthy_threshold: StrictInt = Field(default=2, ge=1)
    deadline: Duration = Field(default=60.0, gt=0)
    # One failed probe may be a blip (a slow answer under a burst); two in a row are not.
    unhealthy_threshold: StrictInt = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _deadline_after_interval(self) -> HealthSpec:
        if self.command is not None and not self.command:
            raise _rule("command", "must not be empty; leave it out to probe `path`")
        if self.deadline <= self.interval:
            raise _rule(
                "deadline",
                f"must be longer than interval ({self.interval:g}s), got {self.deadline:g}s",
            )
        return self


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc}): {value!r}") from None
    return value


class CheckSpec(_Model):
    """A smoke check run against the new release's own instances before it takes traffic: an HTTP probe
    (`http: /path`, its `status`, a `body` regex searched in the answer) or a `command` (exit 0 passes),
    which gets INGOT_TARGET_URL aimed at one new instance directly, not through the router."""

    name: str | None = Field(default=None, min_length=1, max_length=80)
    http: Annotated[
        str | None, AfterValidator(lambda v: v if v is None else _check_http_path(v)),
        WithJsonSchema({"type": "string", "pattern": "^/"}),
    ] = None
    status: StrictInt = Field(default=200, ge=100, le=599)
    body: Annotated[str | None, AfterValidator(lambda v: v if v is None else _check_regex(v))] = None
    command: Command = None
    timeout: Duration = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> CheckSpec:
        if (self.http is None) == (self.command is None):
            raise _rule("http", "a check is either `http: /path` or `command: [...]`, exactly one of them")
        if self.command is not None and not self.command:
            raise _rule("command", "must not be empty")
        if self.command is not None and ("status" in self.model_fields_set or self.body is not None):
            raise _rule("status", "status and body belong to an http check, not a command")
        return self

    @property
    def label(self) -> str:
        """How the check is named in the ledger and in errors."""
        if self.name:
            return self.name
        if self.http is not None:
            return f"GET {self.http}"
        return " ".join(self.command or ())


class HooksSpec(_Model):
    """Local commands around a deploy, run by ingot where the deploy runs, inside the deploy lock."""

    pre_deploy: Command = None
    post_deploy: Command = None
    on_failure: Command = None
    on_rollback: Command = None
    timeout: Duration = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _not_empty(self) -> HooksSpec:
        for name in ("pre_deploy", "post_deploy", "on_failure", "on_rollback"):
            if getattr(self, name) == []:
                raise _rule(name, "must not be empty (leave it out instead)")
        return self


class SecretRef(_Model):
    secret: EnvVarName


NotifyEvent = Literal["deploy", "rollback", "failure"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("deploy", "rollback", "failure")


class NotifySpec(_Model):
    """A webhook told about deploys: POSTed JSON with a Slack-compatible `text`, signed (X-Ingot-Signature)."""

    url: HttpUrl | SecretRef
    key: SecretRef | None = None  # the HMAC key; default: the project's webhook key (keys/webhook.key)
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS), min_length=1)
    timeout: Duration = Field(default=10.0, gt=0)  # per attempt
    attempts: StrictInt = Field(default=5, ge=1, le=20)  # retried with backoff (1 s, 2 s, 4 s ...)


class StrategyStep(_Model):
    weight: StrictInt = Field(ge=1, le=100)
    pause: Pause = None


class AnalysisSpec(_Model):
    interval: Duration = Field(default=5.0, gt=0)
    max_error_rate: StrictFloat = Field(default=0.01, ge=0, le=1)
    max_p99_ms: StrictFloat = Field(default=500.0, gt=0)
    min_requests: StrictInt = Field(default=50, ge=0)
    inconclusive: Literal["wait", "fail"] = "wait"
    # How long an inconclusive verdict may be waited on (default: ten intervals), then it fails.
    max_wait: Duration | None = None
    # Optional limits relative to stable: fail a canary this much worse even within the absolute ones.
    max_error_rate_increase: StrictFloat | None = Field(default=None, ge=0, le=1)
    max_p99_increase_ms: StrictFloat | None = Field(default=None, ge=0)


class StrategySpec(_Model):
    type: Literal["blue-green", "canary", "rolling"] = "blue-green"
    steps: list[StrategyStep] = Field(default_factory=list)
    analysis: AnalysisSpec | None = None
    max_surge: StrictInt = Field(default=1, ge=0)
    max_unavailable: StrictInt = Field(default=0, ge=0)
    drain_timeout: Duration = 30.0
    # After full traffic, how long the previous release stays warm while the new one is judged: a
    # failure, an abort or `ingot rollback` inside it is a pure traffic switch. None: retire it at once.
    verification: Duration | None = Field(default=None, gt=0)
    # Nomad's min_healthy_time, Kubernetes' minReadySeconds: how long fresh instances must stay up and
    # healthy under traffic before the release they replace retires and the deploy succeeds. 0: not at all.
    min_ready: Duration = 10.0
    # For releases that must not overlap: during a switch that takes the old release's last traffic away,
    # new requests wait in the router (up to this long) until its requests in flight have finished.
    hold: Duration | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _strategy_can_progress(self) -> StrategySpec:
        if self.type == "canary" and not self.steps:
            raise _rule("steps", "a canary needs at least one step, e.g. steps: [{weight: 10, pause: 1m}]")
        if self.type == "rolling" and self.verification is not None:
            raise _rule(
                "verification",
                "a rolling update replaces instances one by one and keeps no previous release warm "
                "to switch back to; use blue-green or canary for a verification window",
            )
        if self.type == "rolling" and self.max_surge == 0 and self.max_unavailable == 0:
            raise _rule(
                "max_surge",
                "a rolling update with max_surge 0 and max_unavailable 0 can never replace an instance; "
                "raise one of them",
            )
        return self


def _check_cidr(value: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise _rule("trusted_proxies", f"{value!r} is not an address or CIDR such as 10.0.0.0/8 or "
                                       "192.168.1.7") from None


class RouterSpec(_Model):
    # Applies to services without `routes`; a service with routes listens only where this is written.
    listen: Listen = DEFAULT_LISTEN
    kind: Literal["builtin", "haproxy"] = "builtin"
    # Against hostile clients (see ingot.routers.base.ClientPolicy): deployment parameters, not release identity.
    head_timeout: Duration = Field(default=10.0, gt=0)
    min_body_rate: StrictInt = Field(default=1024, ge=0)
    max_connections: StrictInt = Field(default=16384, ge=1)
    trusted_proxies: list[Annotated[str, AfterValidator(_check_cidr)]] = Field(default_factory=list)
    release_header: StrictBool = True

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to bind; IPv6 hosts without their brackets."""
        return split_listen(self.listen)


class RouteFiles(_Model):
    """`tls: {cert: FILE, key: FILE}`: PEM files, relative to the spec's directory."""

    cert: str = Field(min_length=1)
    key: str = Field(min_length=1)


RouteHost = Annotated[
    str,
    BeforeValidator(_lower),
    AfterValidator(_check_route_host),
    WithJsonSchema({"type": "string", "pattern": ROUTE_HOST_PATTERN, "examples": ["app.example.com", "*.example.com"]}),
]
RoutePath = Annotated[str, AfterValidator(_check_route_path), WithJsonSchema({"type": "string", "pattern": "^/"})]


class RouteSpec(_Model):
    """A host (and path prefix) the service serves on the machine's shared listeners (the edge)."""

    host: RouteHost
    path: RoutePath = "/"
    tls: Annotated[Literal["auto", "off"] | RouteFiles, BeforeValidator(_route_tls)] = "auto"
    redirect: StrictBool | None = None  # HTTP → HTTPS; default: on unless tls is off
    hsts: StrictInt | None = Field(default=None, ge=0)  # Strict-Transport-Security max-age, seconds

    @model_validator(mode="after")
    def _redirect_needs_tls(self) -> RouteSpec:
        if self.tls == "off" and self.redirect:
            raise _rule("redirect", "a redirect to HTTPS needs tls (auto or cert/key files), not tls: off")
        if self.tls == "off" and self.hsts is not None:
            raise _rule("hsts", "HSTS is sent over HTTPS only; it needs tls (auto or cert/key files)")
        return self

    @property
    def redirects(self) -> bool:
        return self.redirect if self.redirect is not None else self.tls != "off"

    @property
    def key(self) -> tuple[str, str]:
        """What two routes may not share: the host and the path (a trailing slash is not a difference)."""
        return self.host, self.path.rstrip("/") or "/"

    @property
    def url(self) -> str:
        return f"{'http' if self.tls == 'off' else 'https'}://{self.host}{self.path}"


class SecuritySpec(_Model):
    """Container hardening. Every default is the hardened choice; relaxing one needs a written reason."""

    read_only: StrictBool = True
    no_new_privileges: StrictBool = True
    drop_all_capabilities: StrictBool = True
    add_capabilities: list[Annotated[str, AfterValidator(_check_capability)]] = Field(default_factory=list)
    tmpfs: list[str] = Field(default_factory=lambda: ["/tmp"])
    # Kubernetes targets: the kubelet refuses to start a container whose user is root. An image that
    # names no numeric non-root USER needs run_as_user (any uid works with a read-only root filesystem).
    run_as_non_root: StrictBool = True
    run_as_user: StrictInt | None = Field(default=None, ge=0)
    reason: str | None = None

    @model_validator(mode="after")
    def _relaxations_need_a_reason(self) -> SecuritySpec:
        if self.run_as_non_root and self.run_as_user == 0:
            raise _rule("run_as_user", "0 is root, which run_as_non_root forbids; pick a non-root uid such as "
                                       "10001, or relax run_as_non_root with a reason")
        if self.relaxations() and not (self.reason and self.reason.strip()):
            raise _rule(
                "reason",
                f"relaxing {', '.join(self.relaxations())} needs a reason: say why, e.g. "
                "reason: \"writes its cache under /var/cache\"",
            )
        return self

    def relaxations(self) -> list[str]:
        """What this service gives up of the hardened defaults, in words."""
        found = []
        if not self.read_only:
            found.append("read_only")
        if not self.no_new_privileges:
            found.append("no_new_privileges")
        if not self.drop_all_capabilities:
            found.append("drop_all_capabilities")
        if self.add_capabilities:
            found.append("add_capabilities " + ",".join(self.add_capabilities))
        if not self.run_as_non_root:
            found.append("run_as_non_root")
        return found

    def release_dump(self) -> dict[str, Any]:
        """For a release's spec digest. The keys added for Kubernetes are left out at their defaults, so
        releases made before they existed keep their ids (an upgrade alone must not redeploy anything)."""
        data = self.model_dump(mode="json")
        if self.run_as_non_root:
            del data["run_as_non_root"]
        if self.run_as_user is None:
            del data["run_as_user"]
        return data


class ResourcesSpec(_Model):
    """Kubernetes-shaped requests and limits of each instance (cpu, memory, ephemeral-storage)."""

    requests: ResourceList = Field(default_factory=dict)
    limits: ResourceList = Field(default_factory=dict)

    @model_validator(mode="after")
    def _requests_within_limits(self) -> ResourcesSpec:
        for name, request in self.requests.items():
            limit = self.limits.get(name)
            if limit is not None and quantity_value(request) > quantity_value(limit):
                raise _rule("requests", f"{name} request {request} is above its limit {limit}; Kubernetes "
                                        "refuses that")
        return self


def _check_build_steps(steps: list[list[str]]) -> list[list[str]]:
    for index, step in enumerate(steps):
        if not step:
            raise ValueError(f"step {index + 1} is empty; each step is an argv such as [npm, ci]")
    return steps


def _build_steps(value: Any) -> Any:
    # `run: [npm, ci]` is one command written one level too flat: said so, rather than run as `npm`, then `ci`.
    if isinstance(value, list) and value and all(isinstance(step, str) for step in value):
        raise ValueError(f"expected a list of steps, each an argv list: [[{', '.join(value)}]] runs "
                         f"`{' '.join(value)}` as one step; e.g. run: [[npm, ci], [npm, run, build]]")
    return value


class BuildSpec(_Model):
    """How a process service's artifact is made: `run` each step, in order, in a private copy of `context`.

    Without steps it is the plain form (`build: DIR`): the context as is, plus its requirements.txt
    installed by pip. With steps, what they leave in the copy is the artifact.
    """

    context: str = Field(default=".", min_length=1)
    run: Annotated[list[list[str]], BeforeValidator(_build_steps), AfterValidator(_check_build_steps)] = Field(
        default_factory=list)
    env: EnvVars = Field(default_factory=dict)

    def release_dump(self) -> str | dict[str, Any]:
        """The plain form stays a string, so releases made before build steps existed keep their ids."""
        if not self.run and not self.env:
            return self.context
        return {"context": self.context, "run": [list(step) for step in self.run],
                "env": dict(sorted(self.env.items()))}


def _build_form(value: Any) -> Any:
    return {"context": value} if isinstance(value, str) else value


class ServiceSpec(_Model):
    build: Annotated[
        BuildSpec | None,
        BeforeValidator(_build_form, json_schema_input_type=str | BuildSpec | None),
    ] = None
    image: str | None = None
    runtime: Literal["process", "docker", "kubernetes"] = "process"
    command: Command = None
    # None: a worker, with no port, no router and no listener (a queue consumer, a scheduler).
    port: StrictInt | None = Field(default=8000, ge=1, le=65535)
    replicas: StrictInt = Field(default=1, ge=0, le=100)
    health: HealthSpec = HealthSpec()  # frozen, so one shared default is safe
    env: EnvVars = Field(default_factory=dict)
    config: list[EnvVarName] = Field(default_factory=list)
    secrets: list[EnvVarName] = Field(default_factory=list)
    strategy: StrategySpec = StrategySpec()
    router: RouterSpec = RouterSpec()
    stop_timeout: Duration = 10.0
    security: SecuritySpec = SecuritySpec()
    allow_mutable_tag: StrictBool = False
    retention: StrictInt = Field(default=5, ge=1, le=1000)
    resources: ResourcesSpec | None = None
    routes: list[RouteSpec] = Field(default_factory=list)
    # Run once per new release, in a one-off instance of it, before any of its instances starts.
    release_command: Command = None
    release_command_timeout: Duration = Field(default=600.0, gt=0)
    # The release's release_command cannot be undone (a dropped column): rollback past it needs --force.
    irreversible: StrictBool = False
    checks: list[CheckSpec] = Field(default_factory=list)
    hooks: HooksSpec = HooksSpec()
    # NAME -> where the instance sees it: named, persistent, kept across replacement and rollback.
    volumes: dict[VolumeName, VolumePath] = Field(default_factory=dict)

    @property
    def worker(self) -> bool:
        """A service with `port: null`: no router, ready by its health command or after min_ready alive."""
        return self.port is None

    @property
    def dedicated_listen(self) -> tuple[str, int] | None:
        """Where the service's own listener is: `router.listen`, its default for services without routes;
        None for a service with routes and no `router.listen` (it is served by the edge's shared ones)."""
        if self.worker or (self.routes and "listen" not in self.router.model_fields_set):
            return None
        return self.router.address

    @model_validator(mode="after")
    def _coherent(self) -> ServiceSpec:
        violations = self._rule_violations()
        if violations:
            # pydantic takes one error per validator; the first is enough to fix before re-running.
            raise _rule(*violations[0])
        if self.runtime == "process" and self.build is None:
            # Set without marking the field as given: model_dump(exclude_unset=True) must keep showing
            # only what the user wrote, so an environment switching to a container runtime with an
            # `image` does not collide with a build directory the user never asked for.
            object.__setattr__(self, "build", BuildSpec())
        return self

    def _rule_violations(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if self.build is not None and self.image is not None:
            found.append(("image", "build and image are mutually exclusive; keep one of them"))
        if self.image is not None and self.runtime not in CONTAINER_RUNTIMES:
            found.append(("image", f"only allowed with runtime docker or kubernetes, not {self.runtime}"))
        if self.runtime == "process" and self.command is None:
            found.append(("command", "the process runtime needs a command, e.g. command: [python, app.py]"))
        if self.command is not None and not self.command:
            found.append(("command", "must not be empty"))
        if self.release_command is not None and not self.release_command:
            found.append(("release_command", "must not be empty; leave it out to run none"))
        if self.allow_mutable_tag and self.image is None:
            found.append(("allow_mutable_tag", "only means something with image: (a tag resolved once to its digest)"))
        if self.runtime in CONTAINER_RUNTIMES and self.build is not None and (self.build.run or self.build.env):
            found.append(("build", f"runtime {self.runtime} builds the context's Containerfile; build.run and "
                                   "build.env are for the process runtime (put the steps in the Containerfile)"))
        if self.runtime in CONTAINER_RUNTIMES and self.build is None and self.image is None:
            found.append(
                ("build", f"runtime {self.runtime} needs build (a directory with a Containerfile) or image")
            )
        if self.strategy.hold is not None and self.runtime == "kubernetes":
            found.append(("strategy", "hold needs ingot's router (built-in or HAProxy), which holds requests "
                                      "during the switch; Kubernetes has no way to park new requests at runtime: "
                                      "remove strategy.hold"))
        found.extend(self._variable_clashes())
        found.extend(self._worker_problems())
        found.extend(self._command_variables())
        seen: dict[tuple[str, str], int] = {}
        for index, route in enumerate(self.routes):
            if route.key in seen:
                first = seen[route.key]
                found.append(("routes", f"routes[{index}] claims {route.host}{route.path}, as routes[{first}] does; "
                                        "each host and path needs one route"))
            seen.setdefault(route.key, index)
        return found

    def _worker_problems(self) -> list[tuple[str, str]]:
        # (On Kubernetes, a worker is a Deployment without a Service: see ingot.kube.render.)
        if not self.worker:
            return []
        why = "port: null makes a worker, which has no router and takes no traffic"
        if self.routes:
            return [("routes", f"{why}: remove its routes, or give it a port")]
        if "listen" in self.router.model_fields_set:
            return [("router", f"{why}: remove router.listen, or give it a port")]
        if self.strategy.type == "canary":
            return [("strategy", f"{why}, so there is no traffic to split: use blue-green or rolling")]
        return []

    def _command_variables(self) -> list[tuple[str, str]]:
        # Only ingot's own ${NAME} expand in command arguments; a misspelt one would reach the app verbatim.
        known = instance_variables(self.volumes, port=not self.worker)
        # A health command runs on the host, told which instance it judges (ingot.executor.check_context).
        judged = {*known, "INGOT_CONTAINER" if self.runtime == "docker" else "INGOT_INSTANCE_PID"}
        for key, argv in (("command", self.command), ("health", self.health.command)):
            allowed = known if key == "command" else judged
            for index, arg in enumerate(argv or ()):
                for name in OWN_VARIABLE.findall(arg):
                    if name not in allowed:
                        where = f"{key}[{index}]" if key == "command" else f"health.command[{index}]"
                        return [(key, f"{where}: ${{{name}}} is not one of ingot's variables "
                                      f"({', '.join(sorted(allowed))}); ${{NAME}} of others is left as it is")]
        return []

    def _variable_clashes(self) -> list[tuple[str, str]]:
        # One variable fed from two sources would make the running value depend on merge order.
        seen: dict[str, str] = {name: "env" for name in self.env}
        found: list[tuple[str, str]] = []
        for source in ("config", "secrets"):
            for name in getattr(self, source):
                if name in seen:
                    where = "twice" if seen[name] == source else f"in both {seen[name]} and {source}"
                    found.append((source, f"{name} is listed {where}; each variable needs one source"))
                seen[name] = source
        return found

    def release_fields(self) -> dict[str, Any]:
        """The JSON-able fields that define WHAT RUNS, for a release's spec digest.

        How it is deployed (replicas, router, strategy, health timing) is left out on purpose: scaling
        or changing the rollout must not mint a new release. Lists of config/secret keys are sorted
        because they are sets; env keeps its keys (digesters should canonicalise key order).
        """
        return {
            "runtime": self.runtime,
            "build": self.build.release_dump() if self.build is not None else None,
            "image": self.image,
            "command": list(self.command) if self.command is not None else None,
            "port": self.port,
            "env": dict(sorted(self.env.items())),
            "config": sorted(self.config),
            "secrets": sorted(self.secrets),
            "health": {"path": self.health.path},
            # Only when given, as below: releases made before workers and volumes existed keep their ids.
            **({"health_command": list(self.health.command)} if self.health.command is not None else {}),
            **({"volumes": dict(sorted(self.volumes.items()))} if self.volumes else {}),
            "stop_timeout": self.stop_timeout,
            **({"security": self.security.release_dump()} if self.runtime != "process" else {}),
            # Only when given: releases made before `resources` existed keep their ids.
            **({"resources": self.resources.model_dump(mode="json")} if self.resources is not None else {}),
            # Likewise: a migration is part of what a release is, and irreversible is recorded with it.
            **({"release_command": list(self.release_command),
                "release_command_timeout": self.release_command_timeout} if self.release_command else {}),
            **({"irreversible": True} if self.irreversible else {}),
        }


def _none_values_as_empty(value: Any) -> Any:
    # `staging:` with nothing after it is YAML null; people mean "no overrides".
    if value is None:
        return {}
    if isinstance(value, dict):
        return {key: {} if item is None else item for key, item in value.items()}
    return value


class GatewayRef(_Model):
    """The Gateway API Gateway that the canary's HTTPRoute attaches to."""

    name: KubeName
    namespace: KubeName | None = None  # default: the target's namespace
    section: KubeName | None = None  # a listener of the Gateway


class PrometheusSpec(_Model):
    """Where a Kubernetes canary's analysis reads its numbers: PromQL queries, each returning one number.

    `$deployment`, `$release`, `$service`, `$namespace` and `$interval` (the analysis interval, e.g. 5s) are
    substituted with the canary's values before each query.
    """

    url: HttpUrl
    requests: str = Field(min_length=1)  # requests in the interval: too few is never a pass (min_requests)
    error_rate: str = Field(min_length=1)  # share of 5xx answers, 0..1
    p99_ms: str | None = Field(default=None, min_length=1)


class KubernetesTarget(_Model):
    """An environment whose services run on a Kubernetes cluster instead of this machine."""

    kind: Literal["kubernetes"]
    context: str | None = None  # a kubeconfig context; default: the kubeconfig's current one, or in-cluster
    namespace: KubeName
    registry: Registry | None = None  # built images are pushed here; the cluster pulls them by digest
    gateway: GatewayRef | None = None  # canary weights on a Gateway API HTTPRoute, if the cluster serves it
    prometheus: PrometheusSpec | None = None  # the canary analysis' metrics source
    # Each named volume of a service is a PersistentVolumeClaim (ReadWriteOnce) of this size, from this
    # StorageClass (None: the cluster's default one).
    volume_size: Quantity = DEFAULT_VOLUME_SIZE
    storage_class: KubeName | None = None


class EtcdSource(_Model):
    """An etcd v3 cluster (its JSON gateway): a listed config key NAME is read from `prefix` + NAME."""

    endpoints: list[HttpUrl] = Field(min_length=1)  # tried in order until one answers
    prefix: str = Field(min_length=1)  # taken as written: /apps/hello/ + FLAG is /apps/hello/FLAG
    timeout: Duration = Field(default=5.0, gt=0)  # per endpoint; then the next one is tried


class ConsulSource(_Model):
    """Consul KV over its HTTP API: NAME is read from `prefix` + NAME (Consul keys have no leading /)."""

    endpoints: list[HttpUrl] = Field(min_length=1)  # e.g. http://127.0.0.1:8500; tried in order
    prefix: str = Field(min_length=1, pattern=r"^[^/]")  # apps/hello/
    timeout: Duration = Field(default=5.0, gt=0)


class ConfigSourceSpec(_Model):
    """Where an environment's config values come from besides ingot's own store (see ingot.config_sources)."""

    etcd: EtcdSource | None = None
    consul: ConsulSource | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ConfigSourceSpec:
        given = [kind for kind in ("etcd", "consul") if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError("expected one source kind, etcd or consul, e.g. etcd: {endpoints: "
                             "[http://127.0.0.1:2379], prefix: /apps/hello/}" + (f"; got {' and '.join(given)}"
                                                                                 if given else ""))
        return self


class EnvironmentSpec(_Model):
    """Per-environment overrides: ``services.<name>`` holds any ServiceSpec fields, merged deeply."""

    services: dict[str, dict[str, Any]] = Field(default_factory=dict)
    self_heal: StrictBool = True
    target: KubernetesTarget | None = None  # None: this machine
    notify: list[NotifySpec] | None = None  # None: the spec's top-level notify
    # Config values read at deploy time from an external store, snapshotted into each release.
    config_source: ConfigSourceSpec | None = None

    @field_validator("services", mode="before")
    @classmethod
    def _no_null_overrides(cls, value: Any) -> Any:
        return _none_values_as_empty(value)


class Spec(_Model):
    project: Name
    services: dict[Name, ServiceSpec] = Field(min_length=1)
    environments: dict[Name, EnvironmentSpec] = Field(default_factory=dict)
    notify: list[NotifySpec] = Field(default_factory=list)

    @field_validator("environments", mode="before")
    @classmethod
    def _no_null_environments(cls, value: Any) -> Any:
        return _none_values_as_empty(value)

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Spec:
        if info.context and info.context.get(SKIP_CROSS_CHECKS):
            return self
        problems = cross_check(
            {name: svc.model_dump(exclude_unset=True) for name, svc in self.services.items()},
            {name: env.model_dump() for name, env in self.environments.items()},
        )
        if problems:
            detail = "; ".join(problem.render() for problem in problems)
            raise PydanticCustomError(RULE_ERROR, "{detail}", {"detail": detail})
        return self

    @property
    def environment_names(self) -> list[str]:
        """Declared environments in file order, or ``["default"]`` when the spec declares none."""
        return list(self.environments) or [DEFAULT_ENVIRONMENT]

    @property
    def default_environment(self) -> str:
        return self.environment_names[0]

    def notify_for(self, env: str) -> list[NotifySpec]:
        """The webhooks of `env`: its own `notify` list if it has one (empty: none), else the spec's."""
        environment = self.environments.get(env)
        if environment is not None and environment.notify is not None:
            return list(environment.notify)
        return list(self.notify)

    def service_for(self, env: str, service: str) -> ServiceSpec:
        """The service as it runs in `env`: the base service with the environment's overrides merged."""
        if env not in self.environment_names:
            raise UserInputError(
                f"unknown environment {env!r}",
                details=[f"environments in this spec: {', '.join(self.environment_names)}"],
            )
        if service not in self.services:
            raise UserInputError(
                f"unknown service {service!r}", details=[f"services in this spec: {', '.join(self.services)}"]
            )
        # Not cached: a private cache would take part in pydantic's == and make equal specs differ.
        return self._merge(env, service)

    def _merge(self, env: str, service: str) -> ServiceSpec:
        base = self.services[service]
        environment = self.environments.get(env)
        override = environment.services.get(service) if environment else None
        if not override:
            return base
        try:
            return ServiceSpec.model_validate(deep_merge(base.model_dump(exclude_unset=True), override))
        except ValidationError as exc:
            # Only reachable for specs built without cross checks; loaded specs were checked already.
            prefix: Loc = ("environments", env, "services", service)
            details = [p.render() for p in problems_from_error(exc, ServiceSpec, prefix)]
            message = f"environment {env} makes service {service} invalid"
            raise UserInputError(message, details=details) from None


class LoadedSpec(Spec):
    """A Spec read from a file: also knows the file, so relative build paths resolve against it."""

    _path: Path = PrivateAttr()

    @classmethod
    def parse(cls, data: Any, path: Path, *, cross_checks: bool = True) -> LoadedSpec:
        """Validate `data` (already-parsed YAML) as the spec stored at `path`."""
        spec = cls.model_validate(data, context={SKIP_CROSS_CHECKS: not cross_checks})
        spec._path = path
        return spec

    @property
    def path(self) -> Path:
        return self._path

    @property
    def root_dir(self) -> Path:
        return self._path.parent


# --- merging and cross checks ----------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge key by key; lists and scalars replace."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def has_path(data: Any, loc: Loc) -> bool:
    for part in loc:
        in_mapping = isinstance(data, Mapping) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_mapping or in_list):
            return False
        data = data[part]
    return True


def cross_check(services: Mapping[str, Any], environments: Mapping[str, Any]) -> list[Problem]:
    """Problems visible only across the spec, from raw mappings as written (possibly invalid ones).

    Every environment/service pair must validate after merging, overrides must name real services, and
    router addresses must be unique, because every environment of every service runs on this machine.
    """
    problems: list[Problem] = []
    placed: list[_Placed] = []
    clusters = _kubernetes_targets(environments)
    for env in list(environments) or [DEFAULT_ENVIRONMENT]:
        overrides = _overrides_of(environments.get(env))
        for name in overrides:
            if name not in services:
                problems.append(
                    Problem(
                        ("environments", env, "services", name),
                        f"unknown service {name!r}; services in this spec: {', '.join(map(str, services))}",
                    )
                )
        for name, base in services.items():
            override = overrides.get(name) or {}
            if isinstance(base, Mapping) and isinstance(override, Mapping):
                problems.extend(_effective_service(env, str(name), base, override, placed, clusters.get(env)))
    # A Kubernetes environment binds nothing on this machine, so its router addresses cannot clash.
    problems.extend(_listen_clashes([p for p in placed if p.env not in clusters], declared=bool(environments)))
    problems.extend(_shared_namespaces(clusters))
    return problems


def _overrides_of(environment: Any) -> Mapping[str, Any]:
    services = environment.get("services") if isinstance(environment, Mapping) else None
    return services if isinstance(services, Mapping) else {}


@dataclass(frozen=True)
class _Placed:
    """A validated effective service and where its router address comes from."""

    env: str
    name: str
    service: ServiceSpec
    origin: Loc
    explicit: bool  # False when router.listen is the default, not written anywhere
    listens: bool = True  # False for a service with routes only: no listener of its own
    routes_origin: Loc | None = None  # where its routes are written (None: `origin` is)

    def route_loc(self, index: int) -> Loc:
        return (*(self.routes_origin or self.origin), index)


def _effective_service(
    env: str, name: str, base: Mapping[str, Any], override: Mapping[str, Any], placed: list[_Placed],
    cluster: KubernetesTarget | None = None,
) -> list[Problem]:
    prefix: Loc = ("environments", env, "services", name)
    try:
        service = ServiceSpec.model_validate(deep_merge(base, override))
    except ValidationError as merged_exc:
        return _override_problems(merged_exc, base, override, prefix)
    if cluster is not None:
        return _kubernetes_problems(env, name, service, override, cluster)
    listen: Loc = ("router", "listen")
    routes_origin: Loc = (*prefix, "routes") if has_path(override, ("routes",)) else ("services", name, "routes")
    if service.dedicated_listen is None:
        # No listener of its own: only its routes can clash.
        placed.append(_Placed(env, name, service, routes_origin, explicit=False, listens=False))
    elif has_path(override, listen):
        placed.append(_Placed(env, name, service, (*prefix, *listen), explicit=True, routes_origin=routes_origin))
    else:
        placed.append(_Placed(env, name, service, ("services", name, *listen), has_path(base, listen),
                              routes_origin=routes_origin))
    return []


def _override_problems(
    merged_exc: ValidationError, base: Mapping[str, Any], override: Mapping[str, Any], prefix: Loc
) -> list[Problem]:
    # A problem the base already has is reported once, at the base; the rest are the override's doing.
    try:
        ServiceSpec.model_validate(base)
        base_messages: set[tuple[Loc, str]] = set()
    except ValidationError as base_exc:
        base_messages = {(p.loc, p.message) for p in problems_from_error(base_exc, ServiceSpec)}
    kept: list[Problem] = []
    for problem in problems_from_error(merged_exc, ServiceSpec):
        if has_path(override, problem.loc) or (problem.loc, problem.message) not in base_messages:
            kept.append(Problem((*prefix, *problem.loc), problem.message))
    return kept


def _route_clashes(placed: list[_Placed], *, declared: bool) -> list[Problem]:
    """A host+path claimed twice on this machine's shared listeners: by two services, or one service in two
    environments (they all run here)."""
    problems: list[Problem] = []
    seen: dict[tuple[str, str], tuple[_Placed, int]] = {}
    for later in placed:
        for index, route in enumerate(later.service.routes):
            earlier = seen.get(route.key)
            if earlier is None:
                seen[route.key] = (later, index)
                continue
            other, other_index = earlier
            if other is later:
                continue  # reported by the service itself
            where = f"service {other.name}" + (f" in environment {other.env}" if declared else "")
            if other.route_loc(other_index) == later.route_loc(index):
                message = (f"{route.host}{route.path} is claimed by environments {other.env} and {later.env} alike; "
                           f"they run on one machine, so give environments.{later.env}.services.{later.name} "
                           "routes of its own")
            else:
                message = f"{route.host}{route.path} is claimed by {where} too ({RELATED}); each host and path " \
                          "needs one service"
            problems.append(Problem(later.route_loc(index), message, related=other.route_loc(other_index)))
    return problems


def _listen_clashes(placed: list[_Placed], *, declared: bool) -> list[Problem]:
    problems: list[Problem] = [*_route_clashes(placed, declared=declared)]
    placed = [p for p in placed if p.listens]
    for index, later in enumerate(placed):
        for earlier in placed[:index]:
            if _same_socket(earlier.service.router.address, later.service.router.address):
                problems.append(_clash(earlier, later, declared))
                break
    return problems


def _same_socket(a: tuple[str, int], b: tuple[str, int]) -> bool:
    # A wildcard bind takes the port on every address, so it clashes with any host on that port.
    return a[1] == b[1] and (a[0] == b[0] or a[0] in _WILDCARD_HOSTS or b[0] in _WILDCARD_HOSTS)


def _clash(earlier: _Placed, later: _Placed, declared: bool) -> Problem:
    address = later.service.router.listen
    value = address if later.explicit else f"{address} (the default, as router.listen is not set)"
    if earlier.origin == later.origin:
        return Problem(
            later.origin,
            f"listen address {value} is used by environments {earlier.env} and {later.env} alike; they run "
            f"on one machine, so set {dotted(('environments', later.env, 'services', later.name))}"
            ".router.listen to a free address",
        )
    where = f"service {earlier.name}" + (f" in environment {earlier.env}" if declared else "")
    mine = f" in environment {later.env}" if declared else ""
    return Problem(
        later.origin,
        f"listen address {value}{mine} clashes with {where} ({RELATED}); all services of all "
        "environments run on one machine, so each needs its own router.listen",
        related=earlier.origin,
    )


# --- Kubernetes targets ------------------------------------------------------------------------------


def _kubernetes_targets(environments: Mapping[str, Any]) -> dict[str, KubernetesTarget]:
    """The environments whose (valid) target is a Kubernetes cluster; invalid targets are reported elsewhere."""
    found: dict[str, KubernetesTarget] = {}
    for env, raw in environments.items():
        target = raw.get("target") if isinstance(raw, Mapping) else None
        if isinstance(target, Mapping):
            try:
                found[str(env)] = KubernetesTarget.model_validate(target)
            except ValidationError:
                continue
    return found


def _kubernetes_problems(env: str, name: str, service: ServiceSpec, override: Mapping[str, Any],
                         cluster: KubernetesTarget) -> list[Problem]:
    """What a cluster cannot run: processes, images it cannot pull by digest, builds with nowhere to go."""

    def where(key: str) -> Loc:
        return ("environments", env, "services", name, key) if key in override else ("services", name, key)

    if service.runtime not in CONTAINER_RUNTIMES:
        return [Problem(where("runtime"),
                        f"environment {env} runs on Kubernetes ({RELATED}), which runs container images only; set "
                        "runtime: docker with build: DIR (a Containerfile) or image: repo@sha256:...",
                        related=("environments", env, "target", "kind"))]
    # Routes are the machine edge's shared listeners; on a cluster, host names belong to its Gateway.
    if service.routes:
        return [Problem(where("routes"), f"environment {env} runs on Kubernetes ({RELATED}), where routes (host "
                                         "names and TLS are the Gateway's there: see target.gateway) are not "
                                         "available yet", related=("environments", env, "target", "kind"))]
    for index, arg in enumerate(service.health.command or ()):
        host_side = [name for name in OWN_VARIABLE.findall(arg) if name in HOST_SIDE_VARIABLES]
        if host_side:
            return [Problem(where("health"),
                            f"health.command[{index}]: ${{{host_side[0]}}} names the instance from the host, but "
                            f"environment {env} runs on Kubernetes ({RELATED}), where health.command runs inside "
                            "the container as an exec probe: write the check as the container runs it, e.g. "
                            "[python, check.py]", related=("environments", env, "target", "kind"))]
    if service.image is not None and not re.fullmatch(IMAGE_DIGEST_PATTERN, service.image):
        return [Problem(where("image"),
                        f"environment {env} runs on Kubernetes, where every node must run the same image: pin it "
                        f"by digest (repo@sha256:<64 hex digits>), got {service.image!r}; allow_mutable_tag does "
                        "not apply there")]
    if service.build is not None and cluster.registry is None:
        return [Problem(where("build"),
                        f"environment {env} runs on Kubernetes ({RELATED}), which pulls images from a registry: set "
                        f"environments.{env}.target.registry (builds are pushed there and run by digest), or use "
                        "image: repo@sha256:...",
                        related=("environments", env, "target"))]
    return []


def _shared_namespaces(clusters: Mapping[str, KubernetesTarget]) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[tuple[str | None, str], str] = {}
    for env, target in clusters.items():
        key = (target.context, target.namespace)
        if key in seen:
            context = f"context {target.context}" if target.context else "the current context"
            problems.append(Problem(
                ("environments", env, "target", "namespace"),
                f"namespace {target.namespace} of {context} is also environment {seen[key]}'s ({RELATED}); "
                "two environments in one namespace would share object names, so give each its own namespace",
                related=("environments", seen[key], "target", "namespace")))
        else:
            seen[key] = env
    return problems
