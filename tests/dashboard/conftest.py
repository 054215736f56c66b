"""The dashboard in a real headless Chromium (the system's, from apt), driven by Playwright.

Chromium missing: the tests skip, saying why, except under CI=true, where they fail instead. A failed test
leaves a screenshot and the page's HTML (printed paths) in its tmp_path, or under $INGOT_TEST_ARTIFACTS.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.api_server import Served, serving
from tests.support.harness import ExampleProject, make_example, stop_everything

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path(os.environ.get("INGOT_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the dashboard tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    setattr(item, f"report_{report.when}", report)  # for the page fixture: did the test fail?
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope, not session: Playwright's sync API keeps an event loop running in this thread while it
    # is open, and every later test that calls asyncio.run() would fail ("another loop is running").
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed: pip install -e '.[dev]'")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"Chromium is not installed at {CHROMIUM}: apt-get install chromium (scripts/test does it)")
    expect.set_options(timeout=20_000)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    errors: list[str] = []
    console: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    try:
        yield tab
        failed = getattr(request.node, "report_call", None)
        if failed is None or failed.failed:
            _keep_evidence(tab, request.node.name, tmp_path, console)
        assert not errors, f"uncaught errors in the page: {errors}"
    finally:
        context.close()


def _keep_evidence(tab: Page, name: str, tmp_path: Path, console: list[str]) -> None:
    base = Path(os.environ["INGOT_TEST_ARTIFACTS"]) / "dashboard" if os.environ.get("INGOT_TEST_ARTIFACTS") \
        else tmp_path / "failure"
    base.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^\w.-]+", "_", name)
    shot, html = base / f"{stem}.png", base / f"{stem}.html"
    try:
        tab.screenshot(path=str(shot), full_page=True)
        html.write_text(tab.content())
    except Exception as exc:  # the page may be gone with the failure; say so rather than hide the real error
        print(f"could not keep a screenshot of the failed test: {exc}")
        return
    print(f"screenshot of the failed test: {shot}\npage HTML: {html}")
    if console:
        print("browser console:\n  " + "\n  ".join(console[-30:]))


@pytest.fixture
def project(tmp_path: Path) -> Iterator[ExampleProject]:
    """The example with one replica (less to start on a busy machine), cleaned up whatever happens."""
    example = make_example(tmp_path, replicas=1)
    try:
        yield example
    finally:
        stop_everything(example)


@pytest.fixture
def deployed(project: ExampleProject) -> ExampleProject:
    """The example with its first release live (blue-green)."""
    project.ingot("deploy", check=True)
    return project


@pytest.fixture
def server(deployed: ExampleProject, request: pytest.FixtureRequest) -> Iterator[Served]:
    """`ingot serve` on a free port for the deployed example: its agent takes over the instances."""
    project = deployed
    with serving(project) as served:
        yield served
        failed = getattr(request.node, "report_call", None)
        if failed is None or failed.failed:
            log = project.root / "serve.log"
            print(f"ingot serve log ({log}), last lines:\n" + "\n".join(log.read_text().splitlines()[-40:]))
