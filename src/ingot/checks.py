"""Smoke checks: the new release's own instances are asked before it takes traffic (spec `checks`).

An HTTP check GETs a path from each instance directly (its status, and a regex searched in its body); a
command check runs once, locally, with INGOT_TARGET_URL aimed at one of the new instances, never at the
router: what it sees is the new release alone. A command runs as the service's own unprivileged user
when ingot is root (as its instances do; see ingot.runtimes.fence), in a clean environment, with a
timeout. Whatever a check answers or prints is kept truncated, with the release's secret values masked.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ingot.httpclients import instance_client
from ingot.local_command import run_command, tail
from ingot.runtimes import fence
from ingot.spec.models import CheckSpec

_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
BODY_SHOWN = 1000  # characters of an HTTP answer kept with a failed check


@dataclass(frozen=True)
class Target:
    """One new instance a check is run against."""

    instance: str
    host: str
    port: int
    checkout: str | None  # a process instance's checkout: a command check's working directory

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class CheckResult:
    check: str
    kind: str  # http | command
    instance: str
    ok: bool
    summary: str  # what happened, in words
    output: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse(raw: Sequence[Mapping[str, Any]]) -> list[CheckSpec]:
    return [CheckSpec.model_validate(dict(item)) for item in raw]


async def run_checks(checks: Sequence[CheckSpec], targets: Sequence[Target], *, project: str, environment: str,
                     service: str, release: str, secrets: Sequence[str] = ()) -> list[CheckResult]:
    """Every check, in order, until one fails: HTTP ones against every target at once, command ones once
    against the first target. Returns the results so far (the last one failed, if any did)."""
    mask = masker(secrets)
    results: list[CheckResult] = []
    for check in checks:
        if check.http is not None:
            found = await asyncio.gather(*(_http(check, t) for t in targets))
        else:
            found = [await asyncio.to_thread(_command, check, targets[0], project, environment, service, release)]
        for result in found:
            results.append(CheckResult(result.check, result.kind, result.instance, result.ok, mask(result.summary),
                                       mask(result.output), result.seconds))
        if not all(r.ok for r in found):
            # The failed one last: the caller reports it.
            results.sort(key=lambda r: r.ok is False)
            return results
    return results


async def _http(check: CheckSpec, target: Target) -> CheckResult:
    assert check.http is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    url = target.url + check.http
    try:
        async with instance_client(timeout=check.timeout) as client:
            answer = await client.get(url)
        body = answer.text
    except httpx.HTTPError as exc:
        return CheckResult(check.label, "http", target.instance, False,
                           f"GET {check.http} on {target.instance} failed: {type(exc).__name__}: {exc}", "",
                           round(loop.time() - started, 3))
    seconds = round(loop.time() - started, 3)
    problems = []
    if answer.status_code != check.status:
        problems.append(f"status {answer.status_code}, expected {check.status}")
    if check.body is not None and re.search(check.body, body) is None:
        problems.append(f"body does not match {check.body!r}")
    summary = (f"GET {check.http} on {target.instance}: " + ("; ".join(problems) if problems
                                                            else f"status {answer.status_code}"))
    return CheckResult(check.label, "http", target.instance, not problems, summary, tail(body, BODY_SHOWN), seconds)


def _command(check: CheckSpec, target: Target, project: str, environment: str, service: str,
             release: str) -> CheckResult:
    from ingot.runtimes.process import resolve_command

    assert check.command is not None
    identity = fence.identity_for(project, service)
    python = fence.interpreter_for(identity)
    argv = resolve_command(tuple(check.command), python)
    env = {
        "PATH": os.path.dirname(python) + ":" + _SYSTEM_PATH,
        "LANG": "C.UTF-8",
        "HOME": fence.NO_HOME if identity is not None else os.environ.get("HOME", "/"),
        "PYTHONUNBUFFERED": "1",
        "INGOT_TARGET_URL": target.url,
        "INGOT_PROJECT": project,
        "INGOT_ENVIRONMENT": environment,
        "INGOT_SERVICE": service,
        "INGOT_RELEASE": release,
        "INGOT_INSTANCE": target.instance,
    }
    cwd = target.checkout if target.checkout and Path(target.checkout).is_dir() else "/"
    preexec = fence.preexec(identity, fence.rlimits(identity is not None), None)
    done = run_command(argv, env=env, cwd=cwd, timeout=check.timeout, preexec=preexec)
    summary = f"command {' '.join(check.command)} against {target.instance} {done.describe(check.timeout)}"
    return CheckResult(check.label, "command", target.instance, done.ok, summary, done.output, done.seconds)


def masker(secrets: Sequence[str], mark: str = "[secret]") -> Callable[[str], str]:
    """Text with these secret values replaced by `mark` (values under 4 characters are left: they would
    mask words)."""
    values = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)  # shorter would mask words

    def mask(text: str) -> str:
        for value in values:
            text = text.replace(value, mark)
        return text

    return mask
