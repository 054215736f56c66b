"""Helpers for the container runtime tests: requests, polling, plain HTTP to a published port."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ingot.runtimes.base import Hardening, InstanceRequest
from tests.support import http_json

T = TypeVar("T")
BASE_IMAGE = "localhost/ingot-base:bookworm"
APP_PORT = 8000


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    tag: str
    context: Path
    output: list[str]


# The test app's image runs as root (it sets no USER), which the hardened default refuses: these tests are
# about other things. Running as a non-root user is the contract suite's (tests/contract/test_runtime.py).
AS_ROOT = Hardening(run_as_non_root=False)


def new_request(project: str, image: str, *, hardening: Hardening = AS_ROOT,
                env: dict[str, str] | None = None, command: tuple[str, ...] = ()) -> InstanceRequest:
    return InstanceRequest(
        instance_id=uuid.uuid4().hex[:12],
        environment="staging",
        service="web",
        release_id="r" + uuid.uuid4().hex[:11],
        project=project,
        image=image,
        container_port=APP_PORT,
        hardening=hardening,
        env=env if env is not None else {"APP_VERSION": "7"},
        command=command,
    )


def wait_for(check: Callable[[], T | None], *, what: str, timeout: float = 30.0) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` and the last error."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the service may not listen yet
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})")
        time.sleep(0.05)


def get_json(port: int, path: str) -> Any:
    return http_json.get_json("127.0.0.1", port, path)


def answering(port: int) -> Any:
    """Wait until the app on `port` answers its health path, and return `/`."""
    wait_for(lambda: get_json(port, "/healthz")["ok"], what=f"the app on 127.0.0.1:{port} to answer")
    return get_json(port, "/")
