"""The Kubernetes target in the spec (FILE:LINE errors, exit 2) and `ingot render` through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ingot.spec import ServiceSpec, json_schema, parse_spec

IMAGE = "registry.example.com/team/hello-web@sha256:" + "ab" * 32
TARGET = "    target: {kind: kubernetes, namespace: hello-prod}\n"


def ingot(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingot", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, input=stdin)


def spec(services: str, environments: str = "  prod:\n" + TARGET) -> str:
    return f"project: hello\nservices:\n{services}environments:\n{environments}"


@pytest.mark.parametrize(
    ("services", "environments", "expected"),
    [
        ("  web:\n    command: [python, app.py]\n", "  prod:\n" + TARGET,
         "ingot.yaml:3: services.web.runtime: environment prod runs on Kubernetes "
         "(environments.prod.target.kind at ingot.yaml:7), which runs container images only"),
        ("  web:\n    runtime: docker\n    image: repo/web:latest\n    allow_mutable_tag: true\n",
         "  prod:\n" + TARGET, "ingot.yaml:5: services.web.image: environment prod runs on Kubernetes, where "
                               "every node must run the same image: pin it by digest"),
        ("  web:\n    runtime: docker\n    build: web\n", "  prod:\n" + TARGET,
         "ingot.yaml:5: services.web.build: environment prod runs on Kubernetes (environments.prod.target at "
         "ingot.yaml:8), which pulls images from a registry"),
        (f"  web:\n    runtime: docker\n    image: {IMAGE}\n",
         "  prod:\n" + TARGET + "  prod2:\n" + TARGET,
         "ingot.yaml:10: environments.prod2.target.namespace: namespace hello-prod of the current context is "
         "also environment prod's"),
        (f"  web:\n    runtime: docker\n    image: {IMAGE}\n",
         "  prod:\n    target: {kind: kubernetes, namespace: Hello_Prod}\n",
         "ingot.yaml:8: environments.prod.target.namespace: must be a Kubernetes name"),
        (f"  web:\n    runtime: docker\n    image: {IMAGE}\n",
         "  prod:\n    target: {kind: kubernetes, namespace: p, registry: 'https://r.example.com'}\n",
         "environments.prod.target.registry: expected a registry and optional path"),
        (f"  web:\n    runtime: docker\n    image: {IMAGE}\n    resources: {{requests: {{cpu: 2}}, "
         "limits: {cpu: 500m}}\n", "  prod:\n" + TARGET,
         "ingot.yaml:6: services.web.resources.requests: cpu request 2 is above its limit 500m"),
        (f"  web:\n    runtime: docker\n    image: {IMAGE}\n    resources: {{requests: {{gpu: 1}}}}\n",
         "  prod:\n" + TARGET, "services.web.resources.requests.gpu: invalid name: expected one of: cpu, memory"),
        (f"  web:\n    runtime: docker\n    image: {IMAGE}\n    security: {{run_as_non_root: false}}\n",
         "  prod:\n" + TARGET, "ingot.yaml:6: services.web.security.reason: relaxing run_as_non_root needs a reason"),
        (f"  web:\n    runtime: docker\n    image: {IMAGE}\n    routes: [{{host: app.example.com}}]\n",
         "  prod:\n" + TARGET, "ingot.yaml:6: services.web.routes: environment prod runs on Kubernetes "
                               "(environments.prod.target.kind at ingot.yaml:9), where routes (host names and TLS "
                               "are the Gateway's there: see target.gateway) are not available yet"),
    ],
)
def test_spec_problems_name_file_line_and_key_with_exit_2(tmp_path: Path, services: str, environments: str,
                                                          expected: str) -> None:
    (tmp_path / "ingot.yaml").write_text(spec(services, environments))
    result = ingot(tmp_path, "validate")
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr.replace("\n  ", " ").replace("\n", " "), result.stderr
    assert "Traceback" not in result.stderr


def test_a_cluster_environment_does_not_clash_on_router_addresses(tmp_path: Path) -> None:
    text = spec(f"  web:\n    runtime: docker\n    image: {IMAGE}\n", "  staging: {}\n  prod:\n" + TARGET)
    loaded = parse_spec(text, tmp_path / "ingot.yaml")
    target = loaded.environments["prod"].target
    assert target is not None and target.namespace == "hello-prod" and target.registry is None


def test_new_security_keys_leave_existing_release_digests_alone() -> None:
    service = ServiceSpec.model_validate({"runtime": "docker", "image": IMAGE})
    fields = service.release_fields()
    assert "run_as_non_root" not in fields["security"] and "run_as_user" not in fields["security"]
    assert "resources" not in fields
    relaxed = ServiceSpec.model_validate({"runtime": "docker", "image": IMAGE, "security": {
        "run_as_non_root": False, "reason": "root image"}, "resources": {"limits": {"memory": "1Gi"}}})
    assert relaxed.release_fields()["security"]["run_as_non_root"] is False
    assert relaxed.release_fields()["resources"] == {"limits": {"memory": "1Gi"}, "requests": {}}
    assert relaxed.security.relaxations() == ["run_as_non_root"]


def test_the_json_schema_describes_the_target() -> None:
    schema = json_schema()
    target = schema["$defs"]["KubernetesTarget"]
    assert set(target["properties"]) == {"kind", "context", "namespace", "registry", "gateway", "prometheus",
                                         "volume_size", "storage_class"}
    assert target["required"] == ["kind", "namespace"]


SECRET_SPEC = f"""project: hello
services:
  web:
    runtime: docker
    image: {IMAGE}
    config: [FLAG]
    secrets: [API_KEY]
    strategy: {{type: canary, steps: [{{weight: 10, pause: 1m}}]}}
environments:
  prod:
    target:
      kind: kubernetes
      namespace: hello-prod
      gateway: {{name: public, namespace: gateways}}
"""


def test_ingot_render_writes_the_same_bytes_twice_and_no_secret(tmp_path: Path) -> None:
    (tmp_path / "ingot.yaml").write_text(SECRET_SPEC)
    assert ingot(tmp_path, "config", "set", "FLAG", "on", "--env", "prod").returncode == 0
    secret = tmp_path / "value.txt"
    secret.write_text("the-secret-value-xyz")
    assert ingot(tmp_path, "secret", "set", "API_KEY", "--from-file", str(secret), "--env", "prod").returncode == 0
    first = ingot(tmp_path, "render", "--env", "prod", "-o", "out")
    assert first.returncode == 0, first.stderr
    assert "Secret web-secrets-" in first.stderr and "ingot kube secrets --env prod" in first.stderr
    written = {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())}
    assert sorted(written) == sorted([
        "SECRETS.md", *(n for n in written if n.startswith(("configmap-web-config-", "deployment-web-"))),
        "httproute-web.yaml", "service-web-canary.yaml", "service-web.yaml"])
    (tmp_path / "out" / "deployment-web-000000000000-000000.yaml").write_text("# Rendered by ingot for an old one\n")
    (tmp_path / "out" / "kustomization.yaml").write_text("resources: []\n")
    again = ingot(tmp_path, "render", "--env", "prod", "-o", "out")
    assert again.returncode == 0, again.stderr
    assert "removed 1 stale: deployment-web-000000000000-000000.yaml" in again.stderr
    after = {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())}
    assert after.pop("kustomization.yaml") == b"resources: []\n"  # not ingot's: left alone
    assert after == written
    printed = ingot(tmp_path, "render", "--env", "prod")
    assert printed.returncode == 0
    documents = list(yaml.safe_load_all(printed.stdout))
    assert sorted(d["kind"] for d in documents) == ["ConfigMap", "Deployment", "HTTPRoute", "Service", "Service"]
    everything = printed.stdout + printed.stderr + b"".join(written.values()).decode()
    assert "the-secret-value-xyz" not in everything
    for path in (tmp_path / ".ingot").rglob("*"):
        if path.is_file():
            assert b"the-secret-value-xyz" not in path.read_bytes()


def test_render_of_a_local_environment_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "ingot.yaml").write_text(spec(f"  web:\n    runtime: docker\n    image: {IMAGE}\n",
                                              "  staging: {}\n"))
    result = ingot(tmp_path, "render", "--env", "staging")
    assert result.returncode == 2
    assert "environment staging runs on this machine, not on Kubernetes" in result.stderr


def test_workers_volumes_health_commands_and_release_commands_are_valid_on_a_cluster(tmp_path: Path) -> None:
    services = (f"  web:\n    runtime: docker\n    image: {IMAGE}\n    volumes: {{uploads: /srv/uploads}}\n"
                "    release_command: [python, manage.py, migrate]\n"
                "    health: {command: [python, check.py, '${INGOT_RELEASE}']}\n"
                f"  queue:\n    runtime: docker\n    image: {IMAGE}\n    port: null\n")
    target = "    target: {kind: kubernetes, namespace: hello-prod, volume_size: 10Gi, storage_class: fast}\n"
    (tmp_path / "ingot.yaml").write_text(spec(services, "  prod:\n" + target))
    result = ingot(tmp_path, "validate")
    assert result.returncode == 0, result.stderr
    loaded = parse_spec((tmp_path / "ingot.yaml").read_text(), tmp_path / "ingot.yaml")
    cluster = loaded.environments["prod"].target
    assert cluster is not None and cluster.volume_size == "10Gi" and cluster.storage_class == "fast"
    (tmp_path / "ingot.yaml").write_text(spec(services, "  prod:\n" + target.replace("10Gi", "ten gigs")))
    bad = ingot(tmp_path, "validate")
    assert bad.returncode == 2 and "environments.prod.target.volume_size" in bad.stderr
    assert "Traceback" not in bad.stderr
