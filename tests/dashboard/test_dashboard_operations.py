"""Deploy and Promote from the dashboard, in a real Chromium against a real `ingot serve`: each confirmed in a
dialog first, reached by keyboard, its progress shown from the operation's event stream."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.dashboard.test_dashboard import api, expect, focused_key, live_release, sign_in
from tests.support.api_server import Served
from tests.support.harness import ExampleProject

pytestmark = pytest.mark.integration


def test_deploy_by_keyboard_and_promote_are_confirmed_then_followed_live(
        deployed: ExampleProject, server: Served, page: Any) -> None:
    example = deployed
    v1 = live_release(server)
    sign_in(page, server)
    row = page.locator("#services tr[data-service=web]")
    expect(row.locator(".live-release")).to_have_text(v1)
    example.set_version("2")

    # By keyboard: from the Services heading, Tab reaches the Deploy button; Enter asks first.
    page.locator("#services-title").focus()
    for _ in range(10):
        page.keyboard.press("Tab")
        if focused_key(page) == "deploy:web":
            break
    else:
        pytest.fail("Tab never reached the Deploy button of web")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Deploy web to staging?")
    expect(dialog).to_contain_text(f"Release {v1} is live now; it keeps serving if the deploy fails.")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name="Deploy web")).to_be_focused()
    page.keyboard.press("Enter")
    expect(dialog).to_be_hidden()

    # The progress, line by line from the event stream, then the result.
    progress = page.locator("#operation")
    expect(progress).to_be_visible()
    expect(page.locator("#operation-title")).to_contain_text("Deploy of web to staging (operation ")
    log = page.locator("#operation-log")
    expect(log).to_contain_text("web: building")
    expect(log).to_contain_text(re.compile(r"web: deployment \w+, \d+ steps"))
    expect(page.locator("#notice")).to_contain_text("Deployed web to staging: release ", timeout=60_000)
    expect(log.locator("li.ok")).to_have_text("Succeeded.")
    expect(log).to_contain_text(re.compile(r"web: ✓ \[1/\d+\]"))
    expect(progress).to_have_attribute("data-state", "succeeded")
    v2 = live_release(server)
    assert v2 != v1 and example.get()["version"] == "2"
    expect(row.locator(".live-release")).to_have_text(v2)
    operation = progress.get_attribute("data-operation")
    assert api(server, f"operations/{operation}")["result"][0]["release"] == v2
    expect(page.get_by_role("button", name="Deploy web").first).to_be_focused()  # back where it began

    # Promote, by mouse: cancelled first (nothing happens), then confirmed.
    promote = row.get_by_role("button", name="Promote web to production")
    promote.click()
    expect(dialog).to_contain_text("Promote web from staging to production?")
    expect(dialog).to_contain_text(f"The artifact of release {v2}, live in staging")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert [s["release"] for s in api(server, "services", environment="production")["services"]] in ([], [None])
    promote.click()
    dialog.get_by_role("button", name="Promote web to production").click()
    expect(page.locator("#operation-title")).to_contain_text("Promotion of web from staging to production")
    expect(page.locator("#notice")).to_contain_text("Promoted web to production: release ", timeout=90_000)
    expect(log.locator("li.ok")).to_have_text("Succeeded.")
    production = api(server, "services", environment="production")["services"][0]
    promoted = api(server, f"operations/{progress.get_attribute('data-operation')}")
    assert promoted["kind"] == "promote" and promoted["result"][0]["release"] == production["release"]
    entries = api(server, "ledger", tail="true", limit=100)["entries"]
    assert any(e["action"] == "promote" and e["payload"]["source_release"] == v2 and e["actor"] == "default (api)"
               for e in entries)
