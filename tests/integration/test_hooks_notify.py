"""Deploy hooks (local commands inside the lock) and webhooks (signed, retried, delivered by the agent
in the background) around real deploys."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import ExampleProject, free_port, poll


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def entries(example: ExampleProject, action: str) -> list[dict[str, Any]]:
    log = example.ingot("audit", "log", "--json", "--limit", "1000", check=True).json
    return [e["payload"] for e in log if e["action"] == action]


def test_hooks_gate_and_follow_deploys_with_their_variables(example: ExampleProject, tmp_path: Path) -> None:
    out, flag = tmp_path / "hooks", tmp_path / "refuse"
    out.mkdir()
    dump = "env | grep ^INGOT_ | sort > {}/{}.env"
    hooks = "".join(f"      {name}: [sh, -c, '{dump.format(out, name)}']\n"
                    for name in ("post_deploy", "on_failure", "on_rollback"))
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("    router: {listen", (
        "    hooks:\n"
        f"      pre_deploy: [sh, -c, 'if [ -e {flag} ]; then echo pre refused; exit 4; fi']\n"
        f"{hooks}"
        "    router: {listen"), 1))

    flag.touch()
    refused = example.ingot("deploy")
    assert refused.code == 1 and "pre_deploy hook exited 4" in refused.err and "pre refused" in refused.err
    assert example.ingot("history", "--json", check=True).json == []  # nothing started, no deployment
    assert [(p["ok"], p["exit_code"], p["output"]) for p in entries(example, "hook.pre_deploy")] == \
        [(False, 4, "pre refused\n")]

    flag.unlink()
    example.ingot("deploy", check=True)
    first = example.get()["release"]
    post = env_file(out / "post_deploy.env")
    assert post["INGOT_PROJECT"] == "hello" and post["INGOT_ENVIRONMENT"] == "staging"
    assert post["INGOT_SERVICE"] == "web" and post["INGOT_RELEASE"] == first
    assert post["INGOT_OUTCOME"] == "succeeded" and post["INGOT_ACTOR"] == "tester@ci" and "INGOT_COMMIT" in post

    example.set_version("2")
    spec.write_text(spec.read_text().replace("    hooks:\n", "    checks: [{http: /healthz, status: 500}]\n"
                                                           "    hooks:\n", 1))
    failed = example.ingot("deploy")
    assert failed.code == 1
    failure = env_file(out / "on_failure.env")
    assert failure["INGOT_OUTCOME"] == "failed" and failure["INGOT_RELEASE"] != first
    assert example.get()["release"] == first

    spec.write_text(spec.read_text().replace("    checks: [{http: /healthz, status: 500}]\n", "", 1))
    example.ingot("deploy", check=True)
    second = example.get()["release"]
    assert env_file(out / "post_deploy.env")["INGOT_RELEASE"] == second != first
    example.ingot("rollback", check=True)
    back = env_file(out / "on_rollback.env")
    assert back["INGOT_RELEASE"] == first and back["INGOT_OUTCOME"] == "succeeded"
    # A hook's failure is recorded, never the deploy's: every recorded run of the others succeeded here.
    assert all(p["ok"] for p in entries(example, "hook.post_deploy") + entries(example, "hook.on_rollback"))


class Receiver(BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.got.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receivers() -> Iterator[tuple[int, int]]:
    """A webhook receiver that answers, and one that accepts connections and never answers."""
    Receiver.got = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hang = socket.create_server(("127.0.0.1", free_port()))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(hang.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.server_address[1], hang.getsockname()[1]
    server.shutdown()
    hang.close()
    for conn in held:
        conn.close()


def test_webhooks_are_signed_and_a_hanging_one_never_holds_the_deploy(
        example: ExampleProject, receivers: tuple[int, int], tmp_path: Path) -> None:
    good, hanging = receivers
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("services:\n", (
        "notify:\n"
        "  - {url: {secret: HOOK_URL}}\n"
        f"  - {{url: 'http://127.0.0.1:{hanging}/hook', timeout: 4s, attempts: 2}}\n"
        "services:\n"), 1))
    source = tmp_path / "hook-url"
    source.write_text(f"http://127.0.0.1:{good}/ingot\n")
    example.ingot("secret", "set", "HOOK_URL", "--from-file", str(source), check=True)
    example.ingot("deploy", check=True)
    # Handed to the agent at the end: the deploy did not wait for the receiver that never answers.
    assert [p for p in entries(example, "notify.delivery") if p["target"].endswith("/hook")] == []
    release = example.get()["release"]

    headers, body = poll(lambda: Receiver.got and Receiver.got[0], timeout=20, what="the webhook")
    key = (example.state / "keys" / "webhook.key").read_text().strip().encode()
    assert headers["X-Ingot-Signature"] == "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    payload = json.loads(body)
    assert payload["event"] == "deploy" and payload["outcome"] == "succeeded" and payload["release"] == release
    assert payload["service"] == "web" and payload["environment"] == "staging" and payload["actor"] == "tester@ci"
    assert "deploy of web to" in payload["text"] and release in payload["text"]

    def hang_attempts() -> list[dict[str, Any]]:
        found = [p for p in entries(example, "notify.delivery") if p["target"].endswith("/hook")]
        return found if len(found) == 2 else []

    attempts = poll(hang_attempts, timeout=40, interval=0.5, what="both attempts at the hanging receiver")
    assert [(a["attempt"], a["delivered"], a["final"], a["error"]) for a in attempts] == \
        [(1, False, False, "ReadTimeout"), (2, False, True, "ReadTimeout")]
    delivered = [p for p in entries(example, "notify.delivery") if p["target"] == "secret HOOK_URL"]
    assert [(d["attempt"], d["delivered"], d["status"]) for d in delivered] == [(1, True, 200)]
    log = example.ingot("audit", "log", "--json", "--limit", "1000", check=True).out
    assert f"127.0.0.1:{good}" not in log  # the URL from the secret is never recorded


class HoldFirst(BaseHTTPRequestHandler):
    """Holds the first notification unanswered (until told to let go), answers 200 to the rest."""

    got: list[bytes] = []
    first = threading.Event()
    release = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        HoldFirst.got.append(body)
        if len(HoldFirst.got) == 1:
            HoldFirst.first.set()
            HoldFirst.release.wait(30)
            return  # the connection is closed with no answer
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_delivery_in_flight_when_the_agent_is_killed_is_made_when_it_is_back(example: ExampleProject) -> None:
    HoldFirst.got, HoldFirst.first, HoldFirst.release = [], threading.Event(), threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), HoldFirst)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = example.root / "ingot.yaml"
        spec.write_text(spec.read_text().replace("services:\n", (
            "notify:\n"
            f"  - {{url: 'http://127.0.0.1:{server.server_address[1]}/hook', timeout: 20s, attempts: 2}}\n"
            "services:\n"), 1))
        example.ingot("deploy", check=True)
        assert HoldFirst.first.wait(20), "the first attempt never reached the receiver"
        spool = example.state / "notify"
        [spooled] = list(spool.glob("*.json"))
        assert json.loads(spooled.read_text())["next_attempt"] == 1
        old_agent = int((example.state / "agent.pid").read_text().split()[0])
        os.kill(old_agent, signal.SIGKILL)  # mid-attempt: its answer is lost with the agent
        HoldFirst.release.set()

        def delivered() -> list[dict[str, Any]]:
            found = entries(example, "notify.delivery")
            return found if any(p["delivered"] for p in found) else []

        # The supervisor starts the agent again; it finds the delivery in its spool and makes it.
        attempts = poll(delivered, timeout=30, interval=0.5, what="the spooled delivery made by the next agent")
        assert [(a["attempt"], a["delivered"], a["status"]) for a in attempts] == [(1, True, 200)]
        assert len(HoldFirst.got) == 2 and HoldFirst.got[0] == HoldFirst.got[1]  # the same notification again
        assert int((example.state / "agent.pid").read_text().split()[0]) != old_agent
        poll(lambda: not list(spool.glob("*.json")), timeout=10, what="the spool to empty")
    finally:
        HoldFirst.release.set()
        server.shutdown()
