"""The CLI's fast path (ingot.cli.fast) prints what the full CLI prints, and the agent probes each instance
once per interval however many callers ask for its status; a no-change deploy is answered (and recorded) as
the full CLI would, and any change is left to the full CLI; Ctrl-C while the CLI starts exits 130 quietly."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingot.agent.client import AgentClient
from ingot.agent.server import STATUS_PROBE_MAX_AGE
from ingot.cli import fast as fast_path
from ingot.paths import StatePaths
from tests.support.harness import ExampleProject, Result, make_example, poll, stop_everything

FULL = {"INGOT_FAST_PATH": "0"}


# Config and a secret, for a no-change deploy to be told from a changed value or secret version.
CONFIGURED = "\n    config: [COLOR]\n    secrets: [TOKEN]"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleProject]:
    tmp = tmp_path_factory.mktemp("fast")
    example = make_example(tmp, extra_service_yaml=CONFIGURED)
    example.env["INGOT_HEAL_INTERVAL"] = "0"  # no self-heal pass counts changing between two `status --json`
    example.env["INGOT_SECRETS_KEY_FILE"] = str(tmp / "keys" / "secrets.key")
    example.ingot("config", "set", "COLOR=blue", check=True)
    _set_secret(example, "TOKEN", "first", tmp)
    example.ingot("deploy", check=True)
    yield example
    stop_everything(example)


def _set_secret(example: ExampleProject, name: str, value: str, where: Path) -> None:
    source = where / "secret-value"  # outside the project: inside, it would be part of the build context
    source.write_text(value + "\n")
    example.ingot("secret", "set", name, "--from-file", str(source), check=True)
    source.unlink()


def _agent(example: ExampleProject) -> AgentClient:
    return AgentClient(StatePaths(example.state.resolve()))


def _fast(example: ExampleProject, *args: str) -> Result:
    """`ingot ARGS`, asserting the agent answered it (the fast path), not the full CLI."""
    before = _agent(example).call("ping")["cli_answers"]
    result = example.ingot(*args)
    assert _agent(example).call("ping")["cli_answers"] == before + 1, result
    return result


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("history",), ("--env", "staging", "history",
                                  "--limit", "5", "--json"), ("history", "-s", "web"), ("logs", "web", "-n", "3"),
                                  ("drift",), ("drift", "--json")])
def test_fast_path_prints_what_the_full_cli_prints(deployed: ExampleProject, args: tuple[str, ...]) -> None:
    fast = _fast(deployed, *args)
    full = deployed.ingot(*args, extra_env=FULL)
    assert (fast.code, fast.out, fast.err) == (full.code, full.out, full.err)
    assert fast.code == 0 and fast.out


def _on_a_terminal(example: ExampleProject, *args: str, env: dict[str, str]) -> bytes:
    """What `ingot ARGS` writes to a 100x30 terminal (stdout and stderr both on it)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    full_env = {**os.environ, "INGOT_ACTOR": "tester@ci", "TERM": "xterm-256color", **example.env, **env}
    for name in ("COLUMNS", "LINES", "INGOT_HOME", "NO_COLOR", "FORCE_COLOR"):
        full_env.pop(name, None)
    with subprocess.Popen([sys.executable, "-m", "ingot", *args], cwd=example.root, env=full_env,
                          stdin=follower, stdout=follower, stderr=follower) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) == 0
    os.close(leader)
    return b"".join(chunks)


@pytest.mark.parametrize("command", ["status", "logs"])
def test_on_a_terminal_too(deployed: ExampleProject, command: str) -> None:
    args = ("logs", "web", "-n", "2") if command == "logs" else (command,)
    before = _agent(deployed).call("ping")["cli_answers"]
    fast = _on_a_terminal(deployed, *args, env={})
    assert _agent(deployed).call("ping")["cli_answers"] == before + 1
    assert fast == _on_a_terminal(deployed, *args, env=FULL)
    assert b"\x1b[" in fast  # bold table headers and instance names: styled as on a terminal


def test_what_it_does_not_know_goes_to_the_full_cli(deployed: ExampleProject) -> None:
    before = _agent(deployed).call("ping")["cli_answers"]
    unknown = deployed.ingot("status", "--no-such-flag")
    assert unknown.code == 2 and "No such option" in unknown.err  # Typer's own message
    bad_env = deployed.ingot("history", "--env", "nowhere")
    assert bad_env.code == 2 and "unknown environment 'nowhere'" in bad_env.err
    assert _agent(deployed).call("ping")["cli_answers"] == before  # both declined by the fast path
    assert deployed.ingot("--version").out == deployed.ingot("--version", extra_env=FULL).out


def test_without_an_agent_the_full_cli_answers(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    status = example.ingot("status", check=True)
    assert "agent not running" in status.out and "nothing deployed" in status.out
    assert example.ingot("history", check=True).out == "no deployments in staging yet\n"


def test_concurrent_status_callers_share_one_probe_per_interval(deployed: ExampleProject) -> None:
    agent = _agent(deployed)
    time.sleep(STATUS_PROBE_MAX_AGE)  # not a wait for a condition: verdicts cached by earlier tests expire
    before = agent.call("ping")["status_probes"]
    reports: list[dict[str, Any]] = []
    started = time.monotonic()
    callers = [threading.Thread(target=lambda: reports.append(agent.call("status", timeout=10))) for _ in range(10)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    elapsed = time.monotonic() - started
    probes = agent.call("ping")["status_probes"] - before
    instances = len(reports[0]["services"][0]["instances"])
    assert len(reports) == 10 and all(r["services"] == reports[0]["services"] for r in reports)
    assert instances == 2 and all(i["health"] == "healthy" for i in reports[0]["services"][0]["instances"])
    # One probe per instance for every interval the ten callers spanned (one, unless the machine is slow).
    assert instances <= probes <= instances * (1 + int(elapsed / STATUS_PROBE_MAX_AGE)), (probes, elapsed)


# ---- deploy ----------------------------------------------------------------------------------------------
def _ledger_tail(example: ExampleProject, after: int) -> list[tuple[Any, ...]]:
    """The ledger's entries after seq `after`: (actor, action, environment, service, subject, payload)."""
    with sqlite3.connect(example.state / "state.db") as conn:
        rows = conn.execute("SELECT actor, action, environment, service, subject, payload_json FROM ledger "
                            "WHERE seq > ? ORDER BY seq", (after,)).fetchall()
    return [(*row[:5], json.loads(row[5])) for row in rows]


def _last_seq(example: ExampleProject) -> int:
    with sqlite3.connect(example.state / "state.db") as conn:
        return int(conn.execute("SELECT max(seq) FROM ledger").fetchone()[0])


@pytest.mark.parametrize("args", [("deploy",), ("deploy", "--json"), ("-e", "staging", "deploy", "-s", "web"),
                                  ("deploy", "--file=ingot.yaml", "--service", "web", "--json")])
def test_a_no_change_deploy_is_answered_as_the_full_cli_answers_it(deployed: ExampleProject,
                                                                    args: tuple[str, ...]) -> None:
    seq = _last_seq(deployed)
    fast = _fast(deployed, *args)
    fast_entries = _ledger_tail(deployed, seq)
    seq = _last_seq(deployed)
    full = deployed.ingot(*args, extra_env=FULL)
    assert (fast.code, fast.out, fast.err) == (full.code, full.out, full.err)
    assert fast.code == 0
    assert json.loads(fast.out)[0]["nothing_changed"] if "--json" in args else "nothing changed" in fast.out
    # The same entries, in the caller's name: the reused build (its context, input key and runtime).
    assert fast_entries == _ledger_tail(deployed, seq)
    assert [(e[0], e[1]) for e in fast_entries] == [("tester@ci", "build")] and fast_entries[0][5]["reused"]


def test_a_no_change_deploy_on_a_terminal_too(deployed: ExampleProject) -> None:
    before = _agent(deployed).call("ping")["cli_answers"]
    fast = _on_a_terminal(deployed, "deploy", env={})
    assert _agent(deployed).call("ping")["cli_answers"] == before + 1
    full = _on_a_terminal(deployed, "deploy", env=FULL)
    # Byte for byte but the spinner's frames: how many it draws depends on how long the step takes (the
    # full CLI's build check takes longer); each ends erased, and what stays on the screen is the same.
    assert b"\x1b[?25l" in fast and b"\x1b[?25l" in full  # the spinner ran on both
    assert _without_spinner(fast) == _without_spinner(full), (fast, full)
    assert b"nothing changed" in fast


def _without_spinner(output: bytes) -> bytes:
    """`output` less rich's live spinners: from hiding the cursor to showing it again and erasing the line."""
    return re.sub(rb"\x1b\[\?25l.*?\x1b\[\?25h(\r?\x1b\[1A)?\r?\x1b\[2K", b"", output, flags=re.S)


def _answered(example: ExampleProject, *args: str) -> bool:
    """Whether the agent answers `ingot deploy ARGS` as a no-change deploy (asked as the thin client asks,
    so that what it declines is not then deployed by the full CLI)."""
    env = {"INGOT_ACTOR": "tester@ci", "COLUMNS": "200", **example.env}
    saved = {k: os.environ.get(k) for k in env}
    cwd = os.getcwd()
    try:
        os.environ.update(env)
        os.chdir(example.root)
        command, options = fast_path._parse(["deploy", *args])
        answer = fast_path._ask(fast_path._request(command, options))
    finally:
        os.chdir(cwd)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert answer["ok"], answer
    return bool(answer["served"])


def test_every_kind_of_change_is_left_to_the_full_cli(deployed: ExampleProject, tmp_path: Path) -> None:
    assert _answered(deployed)
    spec_path = deployed.root / "ingot.yaml"
    spec = spec_path.read_text()
    app = deployed.root / "app.py"
    code = app.read_text()
    assert "hello" in code

    # A file of the build context, its size unchanged, written at once after the last answer.
    app.write_text(code.replace("hello", "hellO", 1))
    assert not _answered(deployed)
    app.write_text(code)
    assert _answered(deployed)
    (deployed.root / "new-file.txt").write_text("x")
    assert not _answered(deployed)
    (deployed.root / "new-file.txt").unlink()
    assert _answered(deployed)

    changes = {
        "a spec field of the release": spec.replace("env: {GREETING: hello}", "env: {GREETING: hi}"),
        "a deployment parameter": spec.replace("drain_timeout: 10s", "drain_timeout: 11s"),
        "the replicas": spec.replace("replicas: 2", "replicas: 3"),
        "an environment's override": spec.replace("  staging: {}", "  staging: {services: {web: {env: {X: '1'}}}}"),
    }
    for what, changed in changes.items():
        assert changed != spec, what
        spec_path.write_text(changed)
        assert not _answered(deployed), what
        spec_path.write_text(spec)
        assert _answered(deployed), what

    deployed.ingot("config", "set", "COLOR=red", check=True)
    assert not _answered(deployed)
    deployed.ingot("config", "set", "COLOR=blue", check=True)  # the same value again: the same snapshot
    assert _answered(deployed)
    # Another environment's: not this one's deploy (and -e production has never been deployed).
    assert not _answered(deployed, "--env", "production")
    # A setting of ingot's own that differs from the agent's (where the signing key is, say).
    deployed.env["INGOT_SIGNING_KEY"] = str(tmp_path / "another.key")
    try:
        assert not _answered(deployed)
    finally:
        del deployed.env["INGOT_SIGNING_KEY"]
    assert _answered(deployed)

    # A new secret version, last: it cannot be undone.
    _set_secret(deployed, "TOKEN", "second", tmp_path)
    assert not _answered(deployed)
    deployed.ingot("deploy", check=True)  # the full CLI: a new release with the new version
    assert _answered(deployed)


def test_an_unchanged_context_is_not_hashed_again(deployed: ExampleProject) -> None:
    agent = _agent(deployed)
    _fast(deployed, "deploy")  # the context is older than CONTEXT_SETTLE by now: its listing is kept
    hashes = agent.call("ping")["deploy_context_hashes"]
    for _ in range(3):
        _fast(deployed, "deploy")
    assert agent.call("ping")["deploy_context_hashes"] == hashes


@pytest.mark.parametrize("delay", [0.0, 0.2, 0.5, 1.0])
def test_ctrl_c_while_the_cli_starts_exits_130_without_a_traceback(deployed: ExampleProject, delay: float) -> None:
    """SIGINT `delay` seconds after ingot's code has begun (Python's own start-up is Python's): while the
    full CLI imports, parses, opens the project or asks the agent."""
    env = {**os.environ, "INGOT_ACTOR": "tester@ci", **deployed.env, **FULL, "PYTHONVERBOSE": "1"}
    env.pop("INGOT_HOME", None)
    begun = threading.Event()
    err: list[bytes] = []

    def read(stream: Any) -> None:
        for line in stream:
            err.append(line)
            if line.startswith(b"import 'ingot.cli.fast'"):  # imported: main() runs next
                begun.set()

    with subprocess.Popen([sys.executable, "-m", "ingot", "deploy"], cwd=deployed.root, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        reader = threading.Thread(target=read, args=(proc.stderr,))
        reader.start()
        assert begun.wait(60)
        time.sleep(delay)  # not a wait for a condition: the point of the start the signal lands at
        proc.send_signal(signal.SIGINT)
        out = proc.stdout.read() if proc.stdout else b""
        proc.wait(timeout=120)
        reader.join()
    text = b"".join(err)
    said = b"\n".join(line for line in text.splitlines() if not line.startswith((b"import ", b"# ")))
    assert b"Traceback (most recent call last)" not in said, said.decode()[-3000:]  # less Python's verbose lines
    if proc.returncode == 0:
        pytest.skip(f"the deploy was done {delay}s in")  # the machine was quick: nothing left to interrupt
    # 130, or ended by the signal itself when it lands as the interpreter finalises (its handlers already the
    # defaults): a shell says 130 for both, and neither printed a traceback.
    assert proc.returncode in (130, -signal.SIGINT), (out, text[-3000:])


def test_drift_with_findings_exits_1_on_both_paths(deployed: ExampleProject) -> None:
    """Last in the module: it kills an instance (and repairs it after)."""
    from ingot.store import Store

    store = Store(deployed.state)
    try:
        victim = store.live_instances("staging", "web")[0]
    finally:
        store.close()
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    full = poll(lambda: (r := deployed.ingot("drift", extra_env=FULL)).code == 1 and r, what="drift to see the kill")
    fast = _fast(deployed, "drift")
    assert (fast.code, fast.out, fast.err) == (full.code, full.out, full.err)
    assert victim.id in fast.out and "repair:" in fast.out
    fast_json = _fast(deployed, "drift", "--json")
    assert fast_json.code == 1 and victim.id in {f["instance"] for f in fast_json.json}
    deployed.ingot("reconcile", check=True)
    assert _fast(deployed, "drift").code == 0
