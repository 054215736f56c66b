"""Releases to render in tests: every strategy, with and without config, secrets, resources and relaxations."""

from __future__ import annotations

from typing import Any

from ingot.kube.render import Layout, Workload
from ingot.spec import HealthSpec, ServiceSpec
from ingot.spec.models import GatewayRef

IMAGE = "registry.example.com/team/hello-web@sha256:" + "3f" * 32
SECRET_VALUES = {"API_KEY": "s3cr3t-value-never-on-disk", "DB_PASSWORD": "hunter2-also-secret"}


def workload(service: dict[str, Any], *, config: dict[str, Any] | None = None, replicas: int = 3,
             health: dict[str, Any] | None = None, release: str = "5e0c1d2a3b4f", name: str = "web",
             **target: Any) -> Workload:
    spec = ServiceSpec.model_validate({"runtime": "docker", "image": IMAGE, **service})
    return Workload(project="hello", environment="prod", service=name, namespace="hello-prod", release=release,
                    image=IMAGE, spec=spec.release_fields(), config=config or {"values": {}}, replicas=replicas,
                    health=HealthSpec.model_validate(health or {}), min_ready=spec.strategy.min_ready, **target)


GATEWAY = GatewayRef(name="public", namespace="gateways", section="https")

# name -> (workload, layout): the golden files under tests/kube/golden/<name>/ are these, rendered.
CASES: dict[str, tuple[Workload, Layout]] = {
    "blue-green-minimal": (workload({}), Layout("blue-green")),
    "blue-green-config-secrets": (
        workload({"command": ["python", "app.py"], "env": {"GREETING": "hello"}, "config": ["FEATURE_FLAG"],
                  "secrets": ["API_KEY", "DB_PASSWORD"], "port": 8080,
                  "resources": {"requests": {"cpu": "250m", "memory": "128Mi"},
                                "limits": {"cpu": 1, "memory": "256Mi"}},
                  "security": {"run_as_user": 10001}},
                 config={"values": {"FEATURE_FLAG": "on"},
                         "secrets": {"API_KEY": {"environment": "prod", "version": 3},
                                     "DB_PASSWORD": {"environment": "prod", "version": 1}}},
                 health={"path": "/ready", "interval": "2s", "timeout": "1s", "healthy_threshold": 3,
                         "deadline": "90s"}),
        Layout("blue-green")),
    "canary-gateway": (
        workload({"strategy": {"type": "canary", "steps": [{"weight": 10, "pause": "1m"}]},
                  "security": {"tmpfs": ["/tmp", "/var/cache/hello"]}}),
        Layout("canary", GATEWAY)),
    "canary-replicas-relaxed": (
        workload({"strategy": {"type": "canary", "steps": [{"weight": 25}]},
                  "security": {"read_only": False, "run_as_non_root": False, "drop_all_capabilities": False,
                               "add_capabilities": ["NET_BIND_SERVICE"], "tmpfs": [],
                               "reason": "a vendor image that writes under / and binds port 80 as root"}},
                 replicas=4),
        Layout("canary")),
    "rolling": (workload({"strategy": {"type": "rolling", "max_surge": 2}, "stop_timeout": "45s"}, replicas=5),
                Layout("rolling")),
    # A worker: no Service, no port, no probe; its pods count once they have run strategy.min_ready.
    "worker-min-ready": (workload({"port": None, "command": ["python", "consume.py"],
                                   "strategy": {"type": "rolling", "min_ready": "15s"}}, replicas=2,
                                  name="queue"),
                         Layout("rolling", GATEWAY, worker=True)),
    # A worker judged by a command run in its container: readiness, startup and liveness exec probes.
    "worker-health-command": (workload({"port": None, "health": {"command": ["python", "check.py",
                                                                              "${INGOT_RELEASE}"]}},
                                       health={"interval": "5s", "deadline": "60s", "unhealthy_threshold": 3},
                                       replicas=1, name="queue"),
                              Layout("blue-green", worker=True)),
    # A web service with volumes and a release_command: claims, and the Job a deploy runs first.
    "volumes-release-command": (
        workload({"secrets": ["DB_PASSWORD"], "release_command": ["python", "manage.py", "migrate"],
                  "release_command_timeout": "5m", "volumes": {"uploads": "/srv/uploads", "cache": "/var/cache/app"},
                  "health": {"command": "curl -fsS http://127.0.0.1:${PORT}/healthz"},
                  "security": {"run_as_user": 10001}},
                 config={"values": {}, "secrets": {"DB_PASSWORD": {"environment": "prod", "version": 2}}},
                 volume_size="5Gi", storage_class="fast-ssd"),
        Layout("blue-green")),
}
