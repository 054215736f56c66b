"""ingot.spec: loading ingot.yaml, merging environments, and reporting problems as FILE:LINE."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from ingot.errors import UserInputError
from ingot.spec import (
    LoadedSpec,
    ServiceSpec,
    Spec,
    SpecError,
    StrategySpec,
    json_schema,
    load_spec,
    parse_duration,
)

DESIGN_EXAMPLE = """\
project: hello
services:
  web:
    build: .                      # context dir
    runtime: process              # process (default) | docker | kubernetes
    command: [python, app.py]     # process runtime: required
    port: 8000
    replicas: 2
    health: {path: /healthz, interval: 1s, timeout: 2s, healthy_threshold: 2, deadline: 60s}
    env: {GREETING: hello}
    config: [FEATURE_FLAG]
    secrets: [API_KEY]
    strategy:
      type: blue-green
      steps: [{weight: 10, pause: 10s}, {weight: 50, pause: manual}]
      analysis: {interval: 5s, max_error_rate: 0.01, max_p99_ms: 500, min_requests: 50}
    router: {listen: "127.0.0.1:8080", kind: builtin}
environments:
  staging: {}
  production:
    services:
      web: {replicas: 3, router: {listen: "127.0.0.1:9080"}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ingot.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return caught.value.details


def only_problem(path: Path) -> str:
    found = problems(path)
    assert len(found) == 1, found
    return found[0]


# --- loading and merging ---------------------------------------------------------------------------


def test_design_example_loads_with_its_values(tmp_path: Path) -> None:
    path = write(tmp_path, DESIGN_EXAMPLE)
    spec = load_spec(path)

    assert isinstance(spec, LoadedSpec)
    assert spec.project == "hello"
    assert spec.path == path
    assert spec.root_dir == tmp_path
    assert spec.environment_names == ["staging", "production"]
    assert spec.default_environment == "staging"
    web = spec.services["web"]
    assert web.command == ["python", "app.py"]
    assert web.health.interval == 1.0
    assert web.health.deadline == 60.0
    assert web.strategy.steps[0].pause == 10.0
    assert web.strategy.steps[1].pause == "manual"
    assert web.strategy.analysis is not None
    assert web.strategy.analysis.interval == 5.0
    assert web.router.address == ("127.0.0.1", 8080)


def test_production_override_merges_over_the_base_service(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, DESIGN_EXAMPLE))

    production = spec.service_for("production", "web")
    assert production.replicas == 3
    assert production.router.address == ("127.0.0.1", 9080)
    # Untouched fields, including the rest of the overridden `router` mapping, are inherited.
    assert production.router.kind == "builtin"
    assert production.command == ["python", "app.py"]
    assert production.env == {"GREETING": "hello"}
    assert production.secrets == ["API_KEY"]
    assert production.health == spec.services["web"].health
    assert production.strategy == spec.services["web"].strategy

    staging = spec.service_for("staging", "web")
    assert staging == spec.services["web"]
    assert staging.replicas == 2


def test_override_merges_mappings_key_by_key_and_replaces_lists(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hello
        services:
          web:
            command: [python, app.py]
            env: {A: "1", B: "2"}
            config: [X, Y]
            health: {path: /ready, interval: 2s}
        environments:
          prod:
            services:
              web:
                env: {B: changed, C: 3}
                config: [Z]
                health: {deadline: 2m}
                command: python other.py --fast
        """,
    )
    web = load_spec(path).service_for("prod", "web")

    assert web.env == {"A": "1", "B": "changed", "C": "3"}
    assert web.config == ["Z"]
    assert (web.health.path, web.health.interval, web.health.deadline) == ("/ready", 2.0, 120.0)
    assert web.command == ["python", "other.py", "--fast"]


def test_spec_without_environments_has_a_default_one(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "project: hi\nservices:\n  web:\n    command: [./run]\n"))

    assert spec.environment_names == ["default"]
    assert spec.default_environment == "default"
    assert spec.service_for("default", "web") == spec.services["web"]


def test_a_directory_means_its_ingot_yaml(tmp_path: Path) -> None:
    write(tmp_path, "project: hi\nservices:\n  web:\n    command: [./run]\n")
    assert load_spec(tmp_path).path == tmp_path / "ingot.yaml"


@pytest.mark.parametrize(
    "environments",
    ["environments:\n  staging:\n", "environments:\n  staging:\n    services:\n      web:\n"],
)
def test_null_environment_or_override_means_no_overrides(tmp_path: Path, environments: str) -> None:
    spec = load_spec(write(tmp_path, "project: hi\nservices:\n  web:\n    command: [./run]\n" + environments))
    assert spec.environment_names == ["staging"]
    assert spec.service_for("staging", "web") == spec.services["web"]


def test_service_for_unknown_names_lists_what_exists(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, DESIGN_EXAMPLE))

    with pytest.raises(UserInputError) as env_error:
        spec.service_for("qa", "web")
    assert env_error.value.message == "unknown environment 'qa'"
    assert env_error.value.details == ["environments in this spec: staging, production"]

    with pytest.raises(UserInputError) as svc_error:
        spec.service_for("staging", "db")
    assert svc_error.value.message == "unknown service 'db'"
    assert svc_error.value.details == ["services in this spec: web"]


def test_process_runtime_defaults_build_to_the_spec_directory() -> None:
    service = ServiceSpec(command=["./run"])
    assert service.build is not None and service.build.context == "."
    # The default is not recorded as written, so overrides can switch to an image without a clash.
    assert "build" not in service.model_fields_set


def test_environment_can_switch_to_a_container_image(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hi
        services:
          web:
            command: [./run]
        environments:
          prod:
            services:
              web: {runtime: docker, image: "registry/web@sha256:abc"}
        """,
    )
    web = load_spec(path).service_for("prod", "web")
    assert (web.runtime, web.image, web.build) == ("docker", "registry/web@sha256:abc", None)


def test_env_values_are_coerced_to_text_and_command_strings_are_split() -> None:
    # As YAML hands them over: a command string, and env values typed as numbers and booleans.
    raw = {"command": "python -m http.server 'a b'", "env": {"N": 3, "R": 0.5, "ON": True, "S": "x"}}
    service = ServiceSpec.model_validate(raw)
    assert service.command == ["python", "-m", "http.server", "a b"]
    assert service.env == {"N": "3", "R": "0.5", "ON": "true", "S": "x"}


def test_release_fields_cover_what_runs_and_ignore_how_it_is_deployed() -> None:
    base = ServiceSpec(command=["./run"], env={"A": "1"}, config=["Y", "X"], secrets=["K"])
    scaled = base.model_copy(update={"replicas": 9, "strategy": StrategySpec(type="rolling")})

    fields = base.release_fields()
    assert fields == {
        "runtime": "process",
        "build": ".",
        "image": None,
        "command": ["./run"],
        "port": 8000,
        "env": {"A": "1"},
        "config": ["X", "Y"],
        "secrets": ["K"],
        "health": {"path": "/healthz"},
        "stop_timeout": 10.0,
    }
    assert json.loads(json.dumps(fields)) == fields
    assert scaled.release_fields() == fields
    assert ServiceSpec(command=["./run", "--v2"]).release_fields() != fields


def test_specs_built_in_memory_run_the_cross_checks_too() -> None:
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate({"project": "hi", "services": {"web": {"command": "a"}, "api": {"command": "b"}}})
    assert "services.api.router.listen: listen address 127.0.0.1:8080" in str(caught.value)


# --- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("10", 10.0),
        (3, 3.0),
        (0.25, 0.25),
        (" 2s ", 2.0),
    ],
)
def test_durations_parse_to_seconds(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 parsecs", "s", "1.s", "-1s", "1d", "", True, None, [1], float("nan")])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_negative_durations_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative, got -1"):
        parse_duration(-1)


# --- problems, each at FILE:LINE with its key path -------------------------------------------------


def test_missing_file_says_where_it_looked_and_hints_at_dash_f(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as caught:
        load_spec(missing)
    assert caught.value.message == f"no spec file at {missing}"
    assert caught.value.details == [
        f"looked for {missing}; run from the project directory or pass -f/--file PATH"
    ]
    assert caught.value.exit_code == 2


def test_bad_yaml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    command: [a\n    port: 1\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.message == f"{path}: 1 problem"
    assert caught.value.details[0].startswith(f"{path}:5: invalid YAML: ")


def test_bad_indentation_points_at_the_offending_line(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    command: a\n   port: 3\n")
    assert only_problem(path) == (
        f"{path}:5: invalid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping at line 3)"
    )


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    command: [a]\n    replicas: abc\n")
    assert only_problem(path) == f"{path}:5: services.web.replicas: expected an integer, got 'abc'"


def test_unknown_key_at_top_level(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    command: [a]\nenvironment: {}\n")
    assert only_problem(path) == (
        f"{path}:5: environment: unknown key; expected one of environments, notify, project, services "
        "(did you mean environments?)"
    )


def test_unknown_key_in_a_service(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    comand: [a]\n")
    # pydantic skips model rules once a field fails, so the missing command shows up only after the
    # typo is fixed; the typo is what the person needs to see first anyway.
    assert only_problem(path) == (
        f"{path}:4: services.web.comand: unknown key; expected one of allow_mutable_tag, build, checks, command, "
        "config, env, health, hooks, image, irreversible, port, release_command, release_command_timeout, replicas, "
        "resources, retention, router, routes, runtime, secrets, security, stop_timeout, strategy, volumes (did you "
        "mean command?)"
    )


def test_unknown_key_in_health(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hi
        services:
          web:
            command: [a]
            health:
              path: /healthz
              intervall: 2s
        """,
    )
    assert only_problem(path) == (
        f"{path}:7: services.web.health.intervall: unknown key; expected one of command, deadline, "
        "healthy_threshold, interval, path, timeout, unhealthy_threshold (did you mean interval?)"
    )


def test_missing_command_for_process_runtime_points_at_the_service(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    port: 8000\n")
    assert only_problem(path) == (
        f"{path}:3: services.web.command: the process runtime needs a command, e.g. command: [python, app.py]"
    )


def test_missing_required_top_level_key_points_at_line_1(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  web:\n    command: [a]\n")
    assert only_problem(path) == f"{path}:1: project: required, but missing"


def test_port_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    command: [a]\n\n\n    port: 70000\n")
    assert only_problem(path) == f"{path}:7: services.web.port: must be between 1 and 65535, got 70000"


def test_image_with_process_runtime(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    command: [a]\n    image: nginx@sha256:1\n")
    assert only_problem(path) == (
        f"{path}:5: services.web.image: only allowed with runtime docker or kubernetes, not process"
    )


def test_build_and_image_are_mutually_exclusive(tmp_path: Path) -> None:
    path = write(
        tmp_path, "project: hi\nservices:\n  web:\n    runtime: docker\n    build: .\n    image: x\n"
    )
    assert only_problem(path) == (
        f"{path}:6: services.web.image: build and image are mutually exclusive; keep one of them"
    )


def test_container_runtime_needs_build_or_image(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    runtime: kubernetes\n")
    assert only_problem(path) == (
        f"{path}:3: services.web.build: runtime kubernetes needs build (a directory with a Containerfile) "
        "or image"
    )


def test_bad_duration(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "project: hi\nservices:\n  web:\n    command: [a]\n    health:\n      timeout: 5 parsecs\n",
    )
    assert only_problem(path) == (
        f"{path}:6: services.web.health.timeout: expected a duration like 500ms, 1s, 1.5s, 2m, 1h or 1m30s "
        "(or a number of seconds), got '5 parsecs'"
    )


def test_bad_pause_and_literal(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hi
        services:
          web:
            command: [a]
            strategy:
              type: canry
              steps:
                - {weight: 10, pause: later}
        """,
    )
    assert problems(path) == [
        f"{path}:6: services.web.strategy.type: expected one of: blue-green, canary, rolling; got 'canry'",
        f"{path}:8: services.web.strategy.steps[0].pause: expected a duration such as 30s or 5m, "
        "or the word manual, got 'later'",
    ]


def test_canary_without_steps(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    command: [a]\n    strategy: {type: canary}\n")
    assert only_problem(path) == (
        f"{path}:5: services.web.strategy.steps: a canary needs at least one step, "
        "e.g. steps: [{weight: 10, pause: 1m}]"
    )


def test_health_deadline_must_exceed_interval(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hi
        services:
          web:
            command: [a]
            health:
              interval: 5s
              deadline: 5s
        """,
    )
    assert only_problem(path) == (
        f"{path}:7: services.web.health.deadline: must be longer than interval (5s), got 5s"
    )


def test_bad_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "project: Hello\nservices:\n  web_1:\n    command: [a]\n    env: {1BAD: x}\n",
    )
    rule = "must be 1-40 lowercase letters, digits or dashes, starting and ending with a letter or digit"
    assert problems(path) == [
        f"{path}:1: project: {rule}, got 'Hello'",
        f"{path}:3: services.web_1: invalid name: {rule}, got 'web_1'",
        f"{path}:5: services.web_1.env.1BAD: invalid name: must be a valid environment variable name "
        "(letters, digits, _; not starting with a digit), got '1BAD'",
    ]


def test_bad_listen_address(tmp_path: Path) -> None:
    path = write(
        tmp_path, "project: hi\nservices:\n  web:\n    command: [a]\n    router: {listen: localhost}\n"
    )
    assert only_problem(path) == (
        f"{path}:5: services.web.router.listen: expected HOST:PORT such as 127.0.0.1:8080, got 'localhost'"
    )


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    command: [a]\n    port: 80\n    port: 81\n")
    assert only_problem(path) == (
        f"{path}:6: services.web.port: duplicate key (first at line 5); YAML would silently keep only "
        "the last one, remove one of them"
    )


def test_duplicate_listen_addresses_across_environments_name_both_places(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hi
        services:
          web:
            command: [a]
            router: {listen: "127.0.0.1:9000"}
        environments:
          staging: {}
          production:
            services:
              web:
                router: {listen: "127.0.0.1:9001"}
          qa:
            services:
              web:
                router:
                  listen: "127.0.0.1:9001"
        """,
    )
    assert only_problem(path) == (
        f"{path}:16: environments.qa.services.web.router.listen: listen address 127.0.0.1:9001 in "
        "environment qa clashes with service web in environment production "
        f"(environments.production.services.web.router.listen at {path}:11); all services of all "
        "environments run on one machine, so each needs its own router.listen"
    )


def test_inherited_listen_address_clashes_between_environments(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "project: hi\nservices:\n  web:\n    command: [a]\nenvironments:\n  staging:\n  production:\n",
    )
    assert only_problem(path) == (
        f"{path}:3: services.web.router.listen: listen address 127.0.0.1:8080 (the default, as "
        "router.listen is not set) is used by environments staging and production alike; they run on "
        "one machine, so set environments.production.services.web.router.listen to a free address"
    )


def test_wildcard_listen_clashes_with_any_host_on_the_same_port(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hi
        services:
          web:
            command: [a]
            router: {listen: "0.0.0.0:9000"}
          api:
            command: [b]
            router: {listen: "127.0.0.1:9000"}
        """,
    )
    assert only_problem(path).startswith(
        f"{path}:8: services.api.router.listen: listen address 127.0.0.1:9000 clashes with service web "
        f"(services.web.router.listen at {path}:5)"
    )


def test_unknown_service_in_override(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hi
        services:
          web:
            command: [a]
        environments:
          production:
            services:
              wbe: {replicas: 2}
        """,
    )
    assert only_problem(path) == (
        f"{path}:8: environments.production.services.wbe: unknown service 'wbe'; services in this spec: web"
    )


def test_invalid_override_points_at_the_override_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hi
        services:
          web:
            command: [a]
            replicas: 2
        environments:
          production:
            services:
              web:
                replicas: -1
                strategy: {type: canary}
        """,
    )
    assert problems(path) == [
        f"{path}:10: environments.production.services.web.replicas: must be between 0 and 100, got -1",
        f"{path}:11: environments.production.services.web.strategy.steps: a canary needs at least one "
        "step, e.g. steps: [{weight: 10, pause: 1m}]",
    ]


def test_rule_broken_by_an_override_is_reported_at_the_override(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hi
        services:
          web:
            command: [a]
        environments:
          production:
            services:
              web:
                strategy: {type: canary}
        """,
    )
    assert only_problem(path) == (
        f"{path}:9: environments.production.services.web.strategy.steps: a canary needs at least one "
        "step, e.g. steps: [{weight: 10, pause: 1m}]"
    )


def test_base_problems_are_reported_once_not_per_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hi
        services:
          web:
            command: [a]
            port: 0
        environments:
          staging:
            services:
              web: {router: {listen: "127.0.0.1:9000"}}
          production: {}
        """,
    )
    assert only_problem(path) == f"{path}:5: services.web.port: must be between 1 and 65535, got 0"


def test_all_problems_are_collected_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        project: hi
        services:
          web:
            command: [a]
            port: 70000
            replicas: many
        environments:
          production:
            services:
              ghost: {}
        """,
    )
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.message == f"{path}: 3 problems"
    assert [line.split(": ")[0] for line in caught.value.details] == [f"{path}:5", f"{path}:6", f"{path}:10"]
    assert str(caught.value).splitlines()[0] == f"{path}: 3 problems"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ":1: the file is empty; expected a mapping with project and services"),
        ("- a\n- b\n", ":1: expected a mapping with project and services at the top level"),
        ("project: hi\nservices: {}\n", ":2: services: needs at least 1 entry"),
        ("project: hi\nservices:\n  web: !!python/object:os.system {}\n", ":3: invalid YAML: "),
        ("project: hi\nservices:\n  web: 3\n", ":3: services.web: expected a mapping, got 3"),
    ],
)
def test_odd_documents_are_problems_not_crashes(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert only_problem(path).startswith(f"{path}{expected}")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "ingot.yaml"
    path.write_bytes(b"project: hi\nservices: \xff\n")
    assert only_problem(path) == f"{path}:2: not UTF-8 text (invalid start byte)"


# --- JSON schema -----------------------------------------------------------------------------------


def test_json_schema_is_valid_draft_2020_12() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "ingot.yaml"
    jsonschema.Draft202012Validator.check_schema(schema)
    json.dumps(schema)  # editors load it as JSON


def test_design_example_validates_against_the_schema() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    assert list(validator.iter_errors(yaml.safe_load(DESIGN_EXAMPLE))) == []


def test_schema_rejects_what_the_loader_rejects() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    bad = {
        "project": "hi",
        "services": {"web": {"command": "a", "port": 70000, "health": {"interval": "5 parsecs"}}},
        "environments": {"prod": {"services": {"web": {"replicas": -1}}}},
    }
    paths = sorted(".".join(map(str, error.absolute_path)) for error in validator.iter_errors(bad))
    assert paths == [
        # An environment may be null, so the failing branch of that anyOf is reported at the environment.
        "environments.prod",
        "services.web.health.interval",
        "services.web.port",
    ]


def test_schema_durations_are_number_or_string() -> None:
    health = json_schema()["$defs"]["HealthSpec"]["properties"]["interval"]
    assert [option["type"] for option in health["anyOf"]] == ["number", "string"]


def test_relaxed_security_needs_a_reason(tmp_path: Path) -> None:
    text = "project: hi\nservices:\n  web:\n    runtime: docker\n    build: .\n    security:\n      read_only: false\n"
    path = write(tmp_path, text)
    assert only_problem(path).startswith(f"{path}:6: services.web.security.reason: relaxing read_only needs a reason")
    ok = write(tmp_path, text + "      reason: writes its cache under /var/cache\n")
    service = load_spec(ok).service_for("default", "web")
    assert service.security.relaxations() == ["read_only"]
    assert service.release_fields()["security"]["read_only"] is False


def test_capabilities_are_checked_and_normalised(tmp_path: Path) -> None:
    text = ("project: hi\nservices:\n  web:\n    runtime: docker\n    build: .\n    security:\n"
            "      add_capabilities: [CAP_NET_BIND_SERVICE]\n      reason: binds port 80\n")
    service = load_spec(write(tmp_path, text)).service_for("default", "web")
    assert service.security.add_capabilities == ["NET_BIND_SERVICE"]
    bad = write(tmp_path, text.replace("CAP_NET_BIND_SERVICE", "net admin"))
    assert "expected a Linux capability name" in only_problem(bad)


def test_allow_mutable_tag_needs_an_image(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    runtime: docker\n    build: .\n"
                           "    allow_mutable_tag: true\n")
    assert "allow_mutable_tag: only means something with image:" in only_problem(path)


def test_analysis_options_reach_the_thresholds(tmp_path: Path) -> None:
    from ingot.analysis import Thresholds

    path = write(tmp_path, "project: hi\nservices:\n  web:\n    command: [a]\n    strategy:\n      type: canary\n"
                           "      steps: [{weight: 10}]\n      analysis: {interval: 2s, max_wait: 30s, "
                           "max_error_rate_increase: 0.02, max_p99_increase_ms: 50}\n")
    analysis = load_spec(path).service_for("default", "web").strategy.analysis
    assert analysis is not None
    thresholds = Thresholds.from_mapping(analysis.model_dump(mode="json"))
    assert (thresholds.interval, thresholds.max_wait) == (2.0, 30.0)
    assert (thresholds.max_error_rate_increase, thresholds.max_p99_increase_ms) == (0.02, 50.0)
    bad = write(tmp_path, path.read_text().replace("max_error_rate_increase: 0.02", "max_error_rate_increase: 2"))
    assert "services.web.strategy.analysis.max_error_rate_increase" in only_problem(bad)


# --- min_ready ---------------------------------------------------------------------------------------


def test_min_ready_defaults_to_ten_seconds_and_an_environment_overrides_it(tmp_path: Path) -> None:
    from ingot.operations import deploy_params
    from ingot.plan import StrategyOptions

    path = write(tmp_path, """\
        project: hi
        services:
          web:
            command: [a]
            strategy: {type: rolling, max_surge: 2}
        environments:
          staging:
            services:
              web: {strategy: {min_ready: 1.5s}}
          production:
            services:
              web: {router: {listen: "127.0.0.1:9080"}}
        """)
    spec = load_spec(path)
    assert spec.service_for("production", "web").strategy.min_ready == 10.0
    staging = spec.service_for("staging", "web")
    assert (staging.strategy.min_ready, staging.strategy.type, staging.strategy.max_surge) == (1.5, "rolling", 2)
    # A deployment parameter, carried to the planner; not part of what runs, so not of the release's identity.
    assert StrategyOptions.from_mapping(deploy_params(staging).strategy_options).min_ready == 1.5
    assert staging.release_fields() == spec.service_for("production", "web").release_fields()
    assert ServiceSpec(command=["a"], strategy=StrategySpec(min_ready=0)).strategy.min_ready == 0


@pytest.mark.parametrize(("value", "expected"), [
    ("-1", "must not be negative, got -1"),
    ("-1s", "expected a duration like 500ms"),
    ("soon", "expected a duration like 500ms"),
])
def test_bad_min_ready_is_reported_at_its_line(tmp_path: Path, value: str, expected: str) -> None:
    path = write(tmp_path, f"project: hi\nservices:\n  web:\n    command: [a]\n    strategy:\n"
                           f"      min_ready: {value}\n")
    problem = only_problem(path)
    assert problem.startswith(f"{path}:6: services.web.strategy.min_ready: {expected}"), problem


def test_bad_min_ready_in_an_override_is_reported_at_the_override(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        project: hi
        services:
          web:
            command: [a]
        environments:
          production:
            services:
              web:
                strategy: {min_ready: -2}
        """)
    assert only_problem(path) == (
        f"{path}:9: environments.production.services.web.strategy.min_ready: must not be negative, got -2")


def test_unhealthy_threshold_is_at_least_one(tmp_path: Path) -> None:
    path = write(tmp_path, "project: hi\nservices:\n  web:\n    command: [a]\n    health:\n"
                           "      unhealthy_threshold: 0\n")
    assert only_problem(path).startswith(f"{path}:6: services.web.health.unhealthy_threshold: must be")
    ok = load_spec(write(tmp_path, "project: hi\nservices:\n  web:\n    command: [a]\n"))
    assert ok.service_for("default", "web").health.unhealthy_threshold == 2


def test_schema_knows_min_ready_and_unhealthy_threshold() -> None:
    schema = json_schema()
    strategy = schema["$defs"]["StrategySpec"]["properties"]["min_ready"]
    assert [option["type"] for option in strategy["anyOf"]] == ["number", "string"] and strategy["default"] == 10.0
    assert schema["$defs"]["HealthSpec"]["properties"]["unhealthy_threshold"]["minimum"] == 1
    validator = jsonschema.Draft202012Validator(schema)
    good = {"project": "hi", "services": {"web": {"command": "a", "strategy": {"min_ready": "30s"}}},
            "environments": {"prod": {"services": {"web": {"strategy": {"min_ready": 0}}}}}}
    assert list(validator.iter_errors(good)) == []
    bad = {"project": "hi", "services": {"web": {"command": "a", "strategy": {"min_ready": "later"}}}}
    assert [".".join(map(str, e.absolute_path)) for e in validator.iter_errors(bad)] == [
        "services.web.strategy.min_ready"]
