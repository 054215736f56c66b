"""Smoke checks, hooks' command runner and webhooks, without a deploy: spec rules, params, the pieces."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ingot import checks, notify
from ingot.deploy_params import DeployParams, HealthPolicy
from ingot.local_command import run_command
from ingot.spec import SpecError, load_spec
from ingot.spec.models import CheckSpec, NotifySpec


def spec_at(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "ingot.yaml"
    path.write_text("project: hi\n" + textwrap.dedent(body))
    return path


def problem(path: Path) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return str(caught.value)


def test_check_rules_name_the_line_and_key(tmp_path: Path) -> None:
    both = spec_at(tmp_path, """\
        services:
          web:
            command: [a]
            checks:
              - {http: /, command: [sh, -c, exit]}
        """)
    assert f"{both}:6: services.web.checks[0].http: a check is either" in problem(both)
    regex = spec_at(tmp_path, """\
        services:
          web:
            command: [a]
            checks: [{http: /, body: "(unclosed"}]
        """)
    assert "services.web.checks[0].body: not a valid regular expression" in problem(regex)


def test_notify_defaults_and_environment_override(tmp_path: Path) -> None:
    spec = load_spec(spec_at(tmp_path, """\
        notify: [{url: "https://hooks.example/x"}]
        services: {web: {command: [a]}}
        environments:
          staging: {notify: []}
          production:
            notify: [{url: {secret: HOOK}, events: [failure]}]
            services: {web: {router: {listen: "127.0.0.1:9080"}}}
          qa: {services: {web: {router: {listen: "127.0.0.1:9081"}}}}
        """))
    assert spec.notify_for("staging") == []
    assert spec.notify_for("qa")[0].events == ["deploy", "rollback", "failure"]
    assert spec.notify_for("production")[0].events == ["failure"]
    bad = spec_at(tmp_path, 'notify: [{url: "ftp://x"}]\nservices: {web: {command: [a]}}\n')
    assert "notify[0].url" in problem(bad)


def test_checks_ride_in_the_params_and_leave_them_unchanged_when_absent() -> None:
    plain = DeployParams(replicas=1, health=HealthPolicy(), listen=("127.0.0.1", 8080))
    assert "checks" not in plain.as_dict()  # an unchanged spec deploys nothing new
    checked = DeployParams(replicas=1, health=HealthPolicy(), listen=("127.0.0.1", 8080),
                           checks=({"http": "/ready", "status": 204},))
    again = DeployParams.from_dict(checked.as_dict())
    assert again == checked and checks.parse(again.checks)[0].status == 204


def test_a_command_that_runs_too_long_is_killed_and_output_is_cut() -> None:
    started = time.monotonic()
    slow = run_command(["sh", "-c", "echo started; sleep 30"], env={"PATH": "/usr/bin:/bin"}, cwd="/",
                       timeout=0.5)
    assert slow.timed_out and slow.code is None and slow.output == "started\n"
    assert time.monotonic() - started < 5
    chatty = run_command(["sh", "-c", "yes x | head -c 100000"], env={"PATH": "/usr/bin:/bin"}, cwd="/",
                         timeout=10)
    assert chatty.ok and len(chatty.output) < 4100 and chatty.output.startswith("[... ")


class App(BaseHTTPRequestHandler):
    posts: list[tuple[dict[str, str], bytes]] = []
    fail_first = 0

    def do_GET(self) -> None:
        body = b"token=s3cr3t-value ready" if self.path == "/ready" else b"nope"
        self.send_response(200 if self.path == "/ready" else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        App.posts.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
        status = 500 if len(App.posts) <= App.fail_first else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def app() -> Iterator[int]:
    App.posts, App.fail_first = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_http_checks_judge_status_and_body_and_mask_secrets(app: int) -> None:
    target = checks.Target("web-1", "127.0.0.1", app, None)
    specs = [CheckSpec(http="/ready", body="ready"), CheckSpec(http="/ready", body="^missing"),
             CheckSpec(http="/never-run")]
    results = asyncio.run(checks.run_checks(specs, [target], project="p", environment="e", service="web",
                                            release="r", secrets=["s3cr3t-value"]))
    assert [r.ok for r in results] == [True, False]  # stops at the first failure
    assert "body does not match '^missing'" in results[1].summary
    assert results[1].output == "token=[secret] ready"
    down = asyncio.run(checks.run_checks([CheckSpec(http="/")], [target], project="p", environment="e",
                                         service="web", release="r"))
    assert "status 503, expected 200" in down[0].summary


def test_a_webhook_is_signed_and_retried_until_delivered(app: int, tmp_path: Path) -> None:
    App.fail_first = 1
    recorded: list[dict[str, Any]] = []
    key = notify.webhook_key(tmp_path / "keys")
    assert notify.webhook_key(tmp_path / "keys") == key  # made once
    assert (tmp_path / "keys" / "webhook.key").stat().st_mode & 0o077 == 0
    facts = {"event": "deploy", "kind": "deploy", "outcome": "succeeded", "project": "p", "environment": "e",
             "service": "web", "release": "r1", "actor": "me", "deployment": "d1"}
    entry = NotifySpec(url=f"http://127.0.0.1:{app}/hook", attempts=3, timeout=2.0)
    assert asyncio.run(notify.deliver(entry, facts, key, lambda name: "", recorded.append))
    assert [(r["attempt"], r.get("status"), r["delivered"]) for r in recorded] == [(1, 500, False), (2, 204, True)]
    headers, body = App.posts[-1]
    assert headers["X-Ingot-Signature"] == "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    sent = json.loads(body)
    assert sent["text"] == "ingot p: deploy of web to r1 in e succeeded (by me)" and sent["release"] == "r1"


def test_the_spool_keeps_pending_deliveries_and_sets_a_torn_one_aside(tmp_path: Path) -> None:
    from ingot.notify import Spool
    from ingot.spec.models import NotifySpec

    spool = Spool(tmp_path)
    entry = NotifySpec.model_validate({"url": {"secret": "HOOK_URL"}, "attempts": 3})
    first = spool.add("staging", "web", "ana", entry, {"event": "deploy", "release": "r1"})
    second = spool.add("staging", "web", "ana", entry, {"event": "failure", "release": "r2"})
    spool.advance(first, 3)
    (spool.dir / "torn.json").write_text('{"id": "torn", "entry": ')
    assert oct((spool.dir / f"{first.id}.json").stat().st_mode & 0o777) == "0o600"
    left = {p.id: p for p in spool.pending()}
    assert set(left) == {first.id, second.id}
    assert left[first.id].next_attempt == 3 and left[second.id].next_attempt == 1
    assert left[first.id].entry == entry and left[second.id].facts == {"event": "failure", "release": "r2"}
    assert "HOOK_URL" in (spool.dir / f"{first.id}.json").read_text()  # the secret's name, never its value
    assert (spool.dir / "torn.bad").exists() and not (spool.dir / "torn.json").exists()
    spool.done(first)
    assert [p.id for p in spool.pending()] == [second.id]
