"""Attack tests: a process instance tries to read what is not its own and is denied.

As root, two services of one project, each with a secret, each running `probe_app.py` (which opens what it
is asked to and reports the errno). Service `web` goes after ingot's secrets key, signing key, database,
agent socket and logs, and after `api`'s checkout and environment. Each attempt must fail with EACCES; its
own secret must be there. Then the fence itself: a uid of its own per service (never 0), NoNewPrivs,
rlimits, the modes of the state at rest, and memory.max where cgroup v2 is usable.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingot import sysusers
from ingot.runtimes import fence
from tests.integration.test_config_secrets import set_secret, sha
from tests.support.harness import ExampleProject, free_port, stop_everything

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="instances get users of their own only under root")]

PROBE = Path(__file__).with_name("probe_app.py")
SERVICE = """  {name}:
    build: .
    command: [python, probe_app.py]
    port: 8000
    replicas: 1
    health: {{path: /healthz, interval: 200ms, timeout: 2s, healthy_threshold: 1, deadline: 30s}}
    secrets: [API_KEY]
    strategy: {{type: blue-green, drain_timeout: 2s, min_ready: 200ms}}
    router: {{listen: "127.0.0.1:{port}"}}
{extra}"""


@pytest.fixture
def two_services(tmp_path: Path) -> Iterator[tuple[ExampleProject, dict[str, int]]]:
    root = tmp_path / "fenced"
    root.mkdir()
    shutil.copy(PROBE, root / "probe_app.py")
    project = f"sec{uuid.uuid4().hex[:8]}"
    ports = {"web": free_port(), "api": free_port()}
    limits = "    resources: {limits: {memory: 64Mi, cpu: 500m}}\n"
    services = "".join(SERVICE.format(name=name, port=port, extra=limits if name == "web" else "")
                       for name, port in ports.items())
    (root / "ingot.yaml").write_text(f"project: {project}\nservices:\n{services}")
    example = ExampleProject(root, ports["web"], _project=project)
    yield example, ports
    stop_everything(example)
    for name in ports:
        sysusers.remove_system_user(sysusers.user_name(project, name))


def ask(port: int, endpoint: str = "/me", **params: str) -> Any:
    response = httpx.get(f"http://127.0.0.1:{port}{endpoint}", params=params, timeout=10, trust_env=False)
    response.raise_for_status()
    return response.json()


def instance_of(example: ExampleProject, service: str) -> dict[str, Any]:
    [item] = [s for s in example.ingot("status", "--json", check=True).json["services"] if s["service"] == service]
    [instance] = item["instances"]
    return dict(instance)


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_an_instance_cannot_read_ingots_state_or_another_service(two_services: tuple[ExampleProject, dict[str, int]],
                                                                  tmp_path: Path) -> None:
    example, ports = two_services
    secrets = {"web": f"web-{uuid.uuid4().hex}", "api": f"api-{uuid.uuid4().hex}"}
    for service, value in secrets.items():
        set_secret(example, "API_KEY", value, tmp_path)  # one key, two releases: each snapshots it at deploy
        example.ingot("deploy", "--service", service, check=True)
    web, api = instance_of(example, "web"), instance_of(example, "api")
    state = example.state
    api_checkout = os.readlink(f"/proc/{api['pid']}/cwd")
    me = ask(ports["web"])

    # Its own secret is in its own environment, readable by it.
    assert me["secret_sha256"] == sha(secrets["web"])
    assert me["own_environ"]["ok"] is True
    assert ask(ports["api"])["secret_sha256"] == sha(secrets["api"])

    signing_keys = sorted((state / "keys").glob("*signing*"))
    assert signing_keys, f"no signing key under {state / 'keys'}"
    targets = {
        "the secrets key": state / "keys" / "secrets.key",
        "the signing key": signing_keys[0],
        "the keys directory": state / "keys",
        "the database": state / "state.db",
        "the agent socket": state / "agent.sock",
        "the state directory": state,
        "the other service's log": next((state / "logs").rglob(f"{api['id']}.log")),
        "the other service's checkout (a file)": Path(api_checkout) / "probe_app.py",
        "the other service's checkout": Path(api_checkout),
        "the list of checkouts": Path(api_checkout).parent,
        "the other instance's environment": Path(f"/proc/{api['pid']}/environ"),
    }
    for what, path in targets.items():
        assert path.exists(), f"{what}: {path} is not there to attack"
        answer = ask(ports["web"], "/read", path=str(path))
        assert answer.get("errno") == errno.EACCES and answer["type"] == "PermissionError", (what, path, answer)

    # Its own checkout it can read (and run from), but not change.
    assert ask(ports["web"], "/read", path=f"{me['cwd']}/probe_app.py")["ok"] is True
    assert stat.S_IMODE(os.stat(me["cwd"]).st_mode) == 0o550 and os.stat(me["cwd"]).st_uid == 0

    # A user of its own per service: not root, not ingot's, not the other service's; no extra groups.
    web_uid, api_uid = me["uid"], ask(ports["api"])["uid"]
    assert 0 not in (web_uid, api_uid) and web_uid != api_uid and me["groups"] == []
    assert web["user"] == sysusers.user_name(example.project, "web")
    status = proc_status(int(web["pid"]))
    assert status["Uid"].split() == [str(web_uid)] * 4 and status["NoNewPrivs"] == "1"
    limits = Path(f"/proc/{web['pid']}/limits").read_text()
    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = fence.NOFILE if hard_nofile == resource.RLIM_INFINITY else min(fence.NOFILE, hard_nofile)
    assert _limit(limits, "Max open files") == (str(nofile), str(nofile))
    assert _limit(limits, "Max processes") == (str(fence.NPROC), str(fence.NPROC))


def test_state_at_rest_is_ingots_alone(two_services: tuple[ExampleProject, dict[str, int]], tmp_path: Path) -> None:
    example, _ports = two_services
    set_secret(example, "API_KEY", uuid.uuid4().hex, tmp_path)
    example.ingot("deploy", check=True)
    state = example.state

    def mode(path: Path) -> int:
        return stat.S_IMODE(os.lstat(path).st_mode)

    assert mode(state) == 0o700
    assert mode(state / "state.db") == 0o600
    assert mode(state / "agent.sock") == 0o600 and mode(state / "agent.log") == 0o600
    assert mode(state / "keys") == 0o700
    assert {p.name: mode(p) for p in (state / "keys").iterdir()} == dict.fromkeys(
        (p.name for p in (state / "keys").iterdir()), 0o600)
    logs = list((state / "logs").rglob("*"))
    assert any(p.name.endswith(".log") for p in logs)
    assert all(mode(p) == (0o700 if p.is_dir() else 0o600) for p in logs), {str(p): oct(mode(p)) for p in logs}
    # The checkouts live outside the state, in directories others can pass through but not list.
    assert mode(example.runs) == 0o711 and mode(example.runs.parent) == 0o711


@pytest.mark.skipif(not fence.cgroups().support().usable,
                    reason=f"cgroup v2 not usable here: {fence.cgroups().support().detail}")
def test_resources_limit_the_instances_cgroup(two_services: tuple[ExampleProject, dict[str, int]],
                                              tmp_path: Path) -> None:
    example, _ports = two_services
    set_secret(example, "API_KEY", uuid.uuid4().hex, tmp_path)
    example.ingot("deploy", "--service", "web", check=True)
    pid = int(instance_of(example, "web")["pid"])
    group = fence.cgroups().group_of(pid)
    assert group is not None, Path(f"/proc/{pid}/cgroup").read_text()
    assert (group / "memory.max").read_text().strip() == str(64 * 1024 * 1024)
    assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
    assert (group / "pids.max").read_text().strip() == str(fence.PIDS)


def _limit(limits: str, name: str) -> tuple[str, str]:
    [line] = [line for line in limits.splitlines() if line.startswith(name)]
    soft, hard = line[len(name):].split()[:2]
    return soft, hard
