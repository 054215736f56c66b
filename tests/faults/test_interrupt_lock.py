"""Ctrl-C on a deploy under load: the lock stays with the agent's operation; abort or detach.

Each deploy here hands the agent a release whose instances take a few seconds to start listening, so
the operation is still running in the agent when the CLI is interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingot.store import Store
from tests.support.harness import ExampleProject, load, lock_of, make_example, poll, stop_everything

SLOW_START = 8.0  # seconds before the new release's instances listen: the deploy waits at its health gate


@pytest.fixture
def example(tmp_path: Path) -> Iterator[ExampleProject]:
    project = make_example(tmp_path)
    yield project
    stop_everything(project)


def slow_version(example: ExampleProject, version: str) -> None:
    example.set_version(version)
    app = example.root / "app.py"
    app.write_text(app.read_text().replace("def main() -> None:\n",
                                           f"def main() -> None:\n    __import__('time').sleep({SLOW_START})\n"))


def cli_env(actor: str) -> dict[str, str]:
    env = {**os.environ, "INGOT_ACTOR": actor, "COLUMNS": "200"}
    env.pop("INGOT_HOME", None)
    return env


def latest_deployment(example: ExampleProject) -> tuple[str, str]:
    """The newest deployment's kind and outcome, read from the store (a CLI call under load takes ~1 s)."""
    store = Store(example.state)
    try:
        latest = store.deployments(limit=1)[0]
        return latest.kind, store.deployment_outcome(latest.id)
    finally:
        store.close()


def deploy_running(example: ExampleProject) -> bool:
    """The new deploy is under way in the agent (its deployment is recorded, not finished)."""
    return latest_deployment(example) == ("deploy", "running")


def live_release(example: ExampleProject) -> str:
    return str(example.ingot("status", "--json", check=True).json["services"][0]["release"])


def test_sigint_detaches_and_the_lock_stays_with_the_agent_until_the_deploy_ends(
        example: ExampleProject, tmp_path: Path) -> None:
    example.ingot("deploy", check=True)
    before = live_release(example)
    slow_version(example, "2")
    with load(example.url, tmp_path) as report:
        deploy = subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=example.root,
                                  env=cli_env("alice@laptop"), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        poll(lambda: deploy_running(example) or deploy.poll() is not None, timeout=60,
             what="the deploy to be under way in the agent")
        assert deploy.poll() is None, deploy.communicate()
        deploy.send_signal(signal.SIGINT)
        out, err = deploy.communicate(timeout=30)
        assert deploy.returncode == 130, (out, err)
        assert "no terminal to ask" in err and "detached" in err and "ingot status" in err
        # The CLI is gone; the agent still runs the deploy, and holds the lock for it.
        held = lock_of(example)
        assert held is not None and held.caller_left and held.agent_alive
        assert held.holder == "alice@laptop" and held.operation == "deploy"
        refused = example.ingot("rollback")
        assert refused.code == 1, refused
        assert "staging is locked: alice@laptop (deploy, running in the agent" in refused.err
        assert "since" in refused.err
        assert deploy_running(example)  # the refusal came while the deploy ran, not after
        poll(lambda: latest_deployment(example) == ("deploy", "succeeded"), timeout=60,
             what="the detached deploy to finish")
        poll(lambda: lock_of(example) is None, timeout=10, what="the agent to let go of the lock")
        deployed = live_release(example)
        assert deployed != before
        rolled = example.ingot("rollback", check=True)
        assert f"rolled back to release {before}" in rolled.out
    assert live_release(example) == before
    assert example.get()["version"] == "1"
    assert report["failures"] == [], report["failures"][:5]
    assert report["versions"].get("2", 0) > 0 and report["versions"].get("1", 0) > 0
    history = example.ingot("history", "--json", check=True).json
    assert [(h["kind"], h["outcome"]) for h in history[:3]] == [
        ("rollback", "succeeded"), ("deploy", "succeeded"), ("deploy", "succeeded")]


def _own_terminal() -> None:
    """In the child: make the pty (already its stdin) the controlling terminal of its new session, so
    that ^C typed there is a SIGINT from the terminal, as for a person."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """`ingot deploy` on a pseudo-terminal: what it shows is collected, keys are typed into it."""

    def __init__(self, example: ExampleProject, actor: str) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=example.root,
                                     env={**cli_env(actor), "TERM": "dumb"}, stdin=slave, stdout=slave,
                                     stderr=slave, start_new_session=True, preexec_fn=_own_terminal)
        os.close(slave)
        self.screen = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.screen += chunk

    @property
    def text(self) -> str:
        return self.screen.decode(errors="replace")

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self.master)
        self._reader.join(timeout=5)


@pytest.mark.parametrize("answer", [b"a\n", b"\x03"], ids=["answer-a", "second-ctrl-c"])
def test_ctrl_c_on_a_terminal_asks_and_abort_puts_traffic_back(example: ExampleProject, tmp_path: Path,
                                                               answer: bytes) -> None:
    example.ingot("deploy", check=True)
    before = live_release(example)
    old_instances = {i["id"] for i in example.ingot("status", "--json", check=True).json["services"][0]["instances"]}
    slow_version(example, "2")
    with load(example.url, tmp_path) as report:
        terminal = Terminal(example, "bob@desk")
        try:
            poll(lambda: deploy_running(example), timeout=60, what="the deploy to be under way in the agent")
            terminal.type(b"\x03")
            poll(lambda: "abort or detach? [a/d]" in terminal.text, timeout=30, what="the question")
            assert f"traffic back to release {before}" in terminal.text
            asked = time.monotonic()
            terminal.type(answer)
            code = terminal.proc.wait(timeout=60)
            took = time.monotonic() - asked
        finally:
            terminal.close()
    assert code == 1, terminal.text
    assert f"aborted: release {before} serves web in staging" in terminal.text
    print(f"abort answered -> command done in {took:.2f}s; {report['requests']} requests, "
          f"{len(report['failures'])} failed")
    assert took < SLOW_START + 3, f"the abort waited {took:.1f}s: it should not wait out the health gate"
    latest = example.ingot("history", "--json", check=True).json[0]
    assert latest["kind"] == "deploy" and latest["outcome"] == "aborted"
    status = example.ingot("status", "--json", check=True).json["services"][0]
    assert status["release"] == before
    assert {i["id"] for i in status["instances"]} == old_instances  # the new ones were retired
    assert lock_of(example) is None
    assert report["failures"] == [], report["failures"][:5]
    assert set(report["versions"]) == {"1"}  # the aborted release never took traffic
    log = example.ingot("audit", "log", "--json", "--limit", "1000", check=True).json
    assert any(e["action"] == "rollout.abort" and e["actor"] == "bob@desk" for e in log)


def test_a_lock_left_by_a_dead_agent_is_stale_and_cleared_when_the_agent_starts_again(
        example: ExampleProject) -> None:
    example.ingot("deploy", check=True)
    before = live_release(example)
    slow_version(example, "2")
    deploy = subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=example.root,
                              env=cli_env("carol@ci"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poll(lambda: deploy_running(example), timeout=60, what="the deploy to be under way in the agent")
    deploy.send_signal(signal.SIGINT)
    deploy.communicate(timeout=30)
    agent = example.ingot("status", "--json", check=True).json["agent"]["pid"]
    os.kill(agent, signal.SIGKILL)
    poll(lambda: not Path(f"/proc/{agent}").exists() or "Z" in Path(f"/proc/{agent}/stat").read_text().split()[2],
         what="the agent to die")
    stale = lock_of(example)
    assert stale is not None and stale.agent_pid == agent and not stale.alive
    assert "carol@ci (deploy, running in the agent" in stale.describe()
    # The next command starts the agent, which marks the deployment interrupted and clears its lock.
    example.set_version("3")
    example.ingot("deploy", check=True)
    assert example.get()["version"] == "3"
    history = example.ingot("history", "--json", check=True).json
    assert [(h["kind"], h["outcome"]) for h in history[:2]] == [("deploy", "succeeded"), ("deploy", "interrupted")]
    assert history[1]["from"] == before
    log = example.ingot("audit", "log", "--json", "--limit", "1000", check=True).json
    cleared = [e for e in log if e["action"] == "unlock"]
    assert len(cleared) == 1 and "carol@ci" in cleared[0]["payload"]["cleared"]
    assert "interrupted" in cleared[0]["payload"]["reason"]
