"""Workers, volumes and ${NAME} in command arguments, as data: the spec's rules, plans, parameters, probes."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from ingot.deploy_params import DeployParams, HealthPolicy
from ingot.health import CheckContext, command_probe, probe
from ingot.operations import deploy_params
from ingot.plan import ServiceState, StrategyOptions, Target, plan_for
from ingot.routers.none import NoRouter
from ingot.runtimes.base import InstanceRequest, VolumeMount
from ingot.runtimes.docker import _create_arguments, instance_env
from ingot.spec.models import ServiceSpec, expand_own


def service(**fields: Any) -> ServiceSpec:
    return ServiceSpec.model_validate({"command": ["python", "w.py"], **fields})


@pytest.mark.parametrize(("fields", "key", "words"), [
    ({"port": None, "routes": [{"host": "a.example.com"}]}, "routes", "remove its routes"),
    ({"port": None, "router": {"listen": "127.0.0.1:9999"}}, "router", "remove router.listen"),
    ({"port": None, "strategy": {"type": "canary", "steps": [{"weight": 10}]}}, "strategy", "no traffic to split"),
    ({"port": None, "command": ["w", "--port=${PORT}"]}, "command", "${PORT} is not one of ingot's variables"),
    ({"command": ["w", "${INGOT_VOLUME_CACHE}"]}, "command", "${INGOT_VOLUME_CACHE} is not one"),
    ({"health": {"command": ["check", "${INGOT_NOPE}"]}}, "health", "health.command[1]: ${INGOT_NOPE}"),
    ({"health": {"command": ["check", "${INGOT_CONTAINER}"]}}, "health", "${INGOT_CONTAINER} is not one"),
    ({"runtime": "docker", "build": ".", "command": ["w", "${INGOT_CONTAINER}"]}, "command",
     "${INGOT_CONTAINER} is not one"),
    ({"volumes": {"data": "data"}}, "volumes", "an absolute path inside the instance"),
    ({"volumes": {"Data": "/data"}}, "volumes", "lowercase"),
])
def test_the_spec_refuses_what_a_worker_or_a_volume_cannot_mean(fields: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        service(**fields)
    [error] = caught.value.errors()
    where = error["loc"][0] if error["loc"] else error["ctx"]["key"]  # a rule names its key in ctx
    assert where == key and words in error["msg"], error


def test_a_worker_has_no_listener_and_ingot_variables_are_known() -> None:
    worker = service(port=None, volumes={"job-queue": "/q"},
                     command=["w", "${INGOT_INSTANCE}", "${INGOT_VOLUME_JOB_QUEUE}", "${HOME}"])
    assert worker.worker and worker.dedicated_listen is None
    params = deploy_params(worker)
    assert params.worker and not params.health.http and not params.health.probes
    assert params.urls == [] and params.url == "worker (no listener)"
    assert worker.release_fields()["port"] is None and worker.release_fields()["volumes"] == {"job-queue": "/q"}


def test_a_health_command_may_name_the_instance_it_judges() -> None:
    # Run on the host, it is told which container (or process) to look at.
    service(runtime="docker", build=".", port=None,
            health={"command": ["podman", "exec", "${INGOT_CONTAINER}", "true"]})
    service(port=None, health={"command": ["kill", "-0", "${INGOT_INSTANCE_PID}"]})


def test_parameters_and_release_fields_of_a_web_service_are_as_before() -> None:
    # Recorded activations and release ids must not change for a spec that uses none of it.
    web = service()
    data = deploy_params(web).as_dict()
    assert "worker" not in data and "command" not in data["health"] and "http" not in data["health"]
    assert "volumes" not in web.release_fields() and "health_command" not in web.release_fields()
    checked = service(port=None, health={"command": ["test", "-f", "x"]})
    again = DeployParams.from_dict(deploy_params(checked).as_dict())
    assert again == deploy_params(checked) and again.health.command == ("test", "-f", "x")


def test_only_ingot_variables_expand() -> None:
    values = {"PORT": "8123", "INGOT_INSTANCE": "w-1"}
    assert expand_own(["--port=${PORT}", "${INGOT_INSTANCE}.log", "${HOME}", "$PORT", "${INGOT_OTHER}"], values) \
        == ["--port=8123", "w-1.log", "${HOME}", "$PORT", "${INGOT_OTHER}"]


def test_a_worker_plan_drains_nothing_and_still_records_the_switch() -> None:
    state = ServiceState(weights=(("old", 100),), instances=(("old", 2),))
    options = StrategyOptions(min_ready=1.0)
    plan = plan_for("blue-green", state, Target("new", 2), options, worker=True)
    assert [s.kind for s in plan.steps] == ["start", "wait_healthy", "route", "settle", "stop"]
    rolling = plan_for("rolling", state, Target("new", 2), options, worker=True)
    assert "drain_instances" not in {s.kind for s in rolling.steps} and rolling.steps[-1].kind == "stop"
    assert "drain" in {s.kind for s in plan_for("blue-green", state, Target("new", 2), options).steps}


def test_the_router_of_a_worker_only_keeps_books() -> None:
    async def scenario() -> None:
        router = NoRouter()
        await router.set_backends("r1", [("127.0.0.1", 0)])
        await router.set_weights({"r1": 100})
        assert await router.drain("r1", 0.0) and router.weights() == {"r1": 100}
        await router.remove_release("r1")
        assert router.weights() == {} and router.listen_address == ("", 0)

    asyncio.run(scenario())


def test_a_health_command_passes_on_exit_0_and_says_why_it_fails() -> None:
    context = CheckContext({"INGOT_INSTANCE": "w-1"})
    ok = asyncio.run(command_probe([sys.executable, "-c", "import os; assert os.environ['INGOT_INSTANCE'] == 'w-1'"],
                                   5.0, context))
    assert ok.ok and ok.detail == "exit 0"
    failed = asyncio.run(command_probe(["sh", "-c", "echo queue ${INGOT_INSTANCE} is gone; exit 4"], 5.0, context))
    assert not failed.ok and failed.detail == "exit 4: queue w-1 is gone"
    hung = asyncio.run(command_probe(["sleep", "30"], 0.2, context))
    assert not hung.ok and "timed out after 0.2s" in hung.detail and hung.elapsed_ms < 5000
    missing = asyncio.run(command_probe(["/nonexistent/check"], 1.0, context))
    assert not missing.ok and "could not run" in missing.detail
    quiet = asyncio.run(probe(None, "127.0.0.1", 0, HealthPolicy(http=False)))  # type: ignore[arg-type]
    assert quiet.ok


def test_a_container_worker_publishes_nothing_and_mounts_its_engine_volumes() -> None:
    request = InstanceRequest(instance_id="w-1", environment="prod", service="worker", release_id="r1",
                              project="shop", image="sha256:abc", container_port=None,
                              command=("w", "${INGOT_INSTANCE}"), worker=True,
                              volumes=(VolumeMount("data", "/data", "ingot-shop-prod-data"),))
    arguments = _create_arguments(request, "ingot-shop-prod-w-1", podman=True)
    assert "ports" not in arguments and arguments["command"] == ["w", "w-1"]
    assert arguments["volumes"] == {"ingot-shop-prod-data": {"bind": "/data", "mode": "rw,U"}}
    env = instance_env(request)
    assert "PORT" not in env and env["INGOT_VOLUME_DATA"] == "/data"
    assert _create_arguments(request, "x", podman=False)["volumes"]["ingot-shop-prod-data"]["mode"] == "rw"
