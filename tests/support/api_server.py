"""A real `ingot serve` process for a test project, and an HTTP client holding its token."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.harness import ExampleProject, free_port, poll, stop_everything


@dataclass
class Served:
    url: str
    token: str
    process: subprocess.Popen[bytes]

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {} if token == "" else {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, trust_env=False)


@contextlib.contextmanager
def serving(example: ExampleProject, *extra: str) -> Iterator[Served]:
    port = free_port()
    log = open(example.root / "serve.log", "wb")  # noqa: SIM115 - closed below, after the process
    env = {**os.environ, "INGOT_ACTOR": "server@ci"}
    # Short failed-authentication delays: the tests that present wrong tokens make many requests in a row.
    process = subprocess.Popen([sys.executable, "-m", "ingot", "serve", "--listen", f"127.0.0.1:{port}",
                                "--auth-delay", "0.2s", *extra],
                               cwd=example.root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"{'https' if '--tls-cert' in extra else 'http'}://127.0.0.1:{port}"
    try:
        try:  # the certificate is the test's to check; here it is only whether serve answers
            poll(lambda: httpx.get(f"{url}/healthz", timeout=2, trust_env=False, verify=False).status_code == 200,
                 timeout=60, what="ingot serve answering")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nserve.log:\n{(example.root / 'serve.log').read_text()}") from None
        token = (example.state / "keys" / "api-token").read_text().strip()
        yield Served(url, token, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def finished(client: httpx.Client, started: httpx.Response, timeout: float = 120) -> dict[str, Any]:
    """The operation a deploy, rollback or promote answered 202 with, polled until it has ended."""
    assert started.status_code == 202, started.text
    where = started.headers["location"]
    return dict(poll(lambda: (op := client.get(where).json())["state"] != "running" and op, timeout=timeout,
                     interval=0.2, what=f"operation {where} to end"))


@contextlib.contextmanager
def deployed_and_served(example: ExampleProject) -> Iterator[tuple[ExampleProject, Served]]:
    """`example` deployed, then served by `ingot serve`; everything it started is stopped afterwards."""
    example.ingot("deploy", check=True)
    try:
        with serving(example) as server:
            yield example, server
    finally:
        stop_everything(example)
