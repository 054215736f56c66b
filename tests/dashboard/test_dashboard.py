"""The dashboard in a real Chromium against a real `ingot serve`: sign-in, a live canary, rollback, keyboard."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.api_server import Served
from tests.support.harness import ExampleProject, poll, use_strategy

pytestmark = pytest.mark.integration

# A name with markup in it: the page must show it as text, never make an element of it.
HOSTILE_ACTOR = '<img src=x id=injected onerror="window.injected=1"><b>ops</b>'
CANARY = ("    strategy: {type: canary, steps: [{weight: 30, pause: manual}],"
          " analysis: {interval: 1s, min_requests: 5}, verification: 4s}")


def expect(*args: Any, **kwargs: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(*args, **kwargs)


def api(server: Served, path: str, **params: Any) -> Any:
    with server.client() as client:
        response = client.get(f"/api/v1/{path}", params=params)
        response.raise_for_status()
        return response.json()


def live_release(server: Served) -> str:
    return str(api(server, "services")["services"][0]["release"])


def sign_in(page: Any, server: Served, token: str | None = None) -> None:
    page.goto(f"{server.url}/")
    page.get_by_label("API token").fill(server.token if token is None else token)
    page.get_by_role("button", name="Sign in").click()


@contextlib.contextmanager
def running(example: ExampleProject, *args: str, actor: str) -> Iterator[subprocess.Popen[str]]:
    """`ingot ARGS` in a process of its own for the duration of the block (killed if still running)."""
    env = {**os.environ, "INGOT_ACTOR": actor}
    env.pop("INGOT_HOME", None)
    process = subprocess.Popen([sys.executable, "-m", "ingot", *args], cwd=example.root, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


@contextlib.contextmanager
def steady_traffic(url: str) -> Iterator[dict[str, Any]]:
    """A gentle stream of requests (about 50 a second) for the canary analysis to judge; counts failures."""
    report: dict[str, Any] = {"requests": 0, "failures": []}
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(trust_env=False, timeout=10) as client:
            while not stop.wait(0.02):
                report["requests"] += 1
                try:
                    client.get(url).raise_for_status()
                except httpx.HTTPError as exc:
                    report["failures"].append(repr(exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield report
    finally:
        stop.set()
        thread.join(timeout=30)


# What has focus: [tag, id or text, the section it is in].
FOCUSED = """(() => {
  const e = document.activeElement, s = e.closest("section");
  return [e.tagName, e.id || e.textContent.trim().slice(0, 40), s ? s.getAttribute("aria-labelledby") : ""];
})()"""


def focused_key(page: Any) -> str | None:
    key = page.evaluate("document.activeElement && document.activeElement.dataset.focusKey || null")
    return None if key is None else str(key)


def test_a_wrong_token_is_refused_and_a_rotated_one_brings_the_sign_in_back(
        deployed: ExampleProject, server: Served, page: Any) -> None:
    sign_in(page, server, token="not-the-token")
    expect(page.locator("#sign-in-error")).to_contain_text("That token was not accepted")
    expect(page.locator("#dashboard")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('ingot.token')") is None
    expect(page.get_by_label("API token")).to_be_focused()

    page.get_by_label("API token").fill(server.token)
    page.keyboard.press("Enter")
    expect(page.locator("#services tr[data-service=web]")).to_be_visible()
    # Kept for this tab: a reload needs no sign-in.
    page.reload()
    expect(page.locator("#services tr[data-service=web]")).to_be_visible()

    deployed.ingot("token", "rotate", check=True)  # the old token stops working at once
    expect(page.locator("#sign-in-error")).to_contain_text("no longer accepts the token")
    expect(page.locator("#dashboard")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('ingot.token')") is None


def test_a_route_shows_its_certificate_state_and_an_acme_failure_its_reason(
        deployed: ExampleProject, server: Served, page: Any) -> None:
    # The agent's report as an edge with a failing ACME order would make it (test_edge_acme.py makes real
    # ones): the page shows what the API gives, the reason and the retry time included.
    failed = {"url": "https://shop.test/", "tls": "auto",
              "certificate": "failed: shop.test: connection refused, retry at 2026-12-01 18:05:00 UTC",
              "acme": {"host": "shop.test", "state": "failed", "not_after": None, "failures": 1,
                       "last_error": "shop.test: connection refused", "next_attempt": "2026-12-01T18:05:00+00:00"}}
    valid = {"url": "https://www.test/", "tls": "auto", "certificate": "valid until 2027-03-01 00:00 UTC",
             "acme": {**failed["acme"], "host": "www.test", "state": "valid", "last_error": None}}  # type: ignore[dict-item]

    def with_routes(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        for item in body["services"]:
            item["routes"] = [failed, valid]
        route.fulfill(response=response, json=body)

    page.route(re.compile(r".*/api/v1/overview.*"), with_routes)
    sign_in(page, server)
    shop = page.locator('#services tr[data-service=web] li[data-route="https://shop.test/"]')
    expect(shop).to_contain_text("certificate failed")
    expect(shop).to_contain_text("connection refused, retry at 2026-12-01 18:05:00 UTC")
    expect(shop.locator(".badge.bad")).to_be_visible()
    www = page.locator('#services tr[data-service=web] li[data-route="https://www.test/"]')
    expect(www.locator(".badge.ok")).to_have_text("certificate valid")


def test_a_canary_shows_live_then_a_rollback_from_the_page_is_recorded(
        deployed: ExampleProject, server: Served, page: Any) -> None:
    example = deployed
    v1 = live_release(server)
    sign_in(page, server)
    expect(page.locator("#services tr[data-service=web] .live-release")).to_have_text(v1)
    expect(page.locator("#services tr[data-service=web] .instance-summary")).to_have_text("1 of 1 healthy")
    page.evaluate("window.sameDocument = true")  # gone if anything reloads the page

    # v2 as a canary held at 30% until resumed, deployed from another process, under steady traffic.
    example.set_version("2")
    use_strategy(example, CANARY)
    with steady_traffic(example.url) as traffic:
        with running(example, "deploy", actor=HOSTILE_ACTOR) as deploy:
            v2 = watch_the_canary(page, server, v1)
            assert deploy.wait(timeout=60) == 0, deploy.stdout.read() if deploy.stdout else ""
        rollout = page.locator("#rollouts article[data-service=web]")
        expect(rollout.locator(".rollout-state")).to_contain_text("No rollout in progress", timeout=30_000)
        expect(page.locator("#services tr[data-service=web] .live-release")).to_have_text(v2)
        assert example.get()["version"] == "2"
        assert page.locator("#injected").count() == 0
        assert page.evaluate("window.injected") is None

        roll_back_from_the_page(page, v1, v2)
    assert traffic["requests"] > 100
    assert traffic["failures"] == []

    answer = example.get()
    assert (answer["version"], answer["release"]) == ("1", v1)
    entries = api(server, "ledger", tail="true", limit=50)["entries"]
    rollback = [e for e in entries if e["action"] == "rollback.start"]
    # The actor is the name of the token the dashboard signed in with.
    assert [(e["actor"], e["payload"]["to"], e["payload"]["from"]) for e in rollback] == [("default (api)", v1, v2)]
    assert any(e["action"] == "rollback.finish" and e["payload"]["outcome"] == "succeeded" for e in entries)
    # The page follows: the live release, the history and the ledger, all without a reload.
    expect(page.locator("#services tr[data-service=web] .live-release")).to_have_text(v1)
    expect(page.locator("#history tbody tr").first).to_contain_text("rollback")
    expect(page.locator("#ledger tr[data-action='rollback.finish']")).to_have_count(1)
    expect(page.locator("#ledger-verify")).to_contain_text("intact")
    assert page.evaluate("window.sameDocument") is True


def watch_the_canary(page: Any, server: Served, v1: str) -> str:
    """The rollout as the page shows it, step by step; resumed from the page. Returns the new release."""
    rollout = page.locator("#rollouts article[data-service=web]")
    expect(rollout.locator(".step")).to_contain_text("pause until an operator resumes or aborts", timeout=90_000)
    v2 = str(api(server, "rollouts")[0]["deployment"]["release"])
    expect(rollout.locator(".step")).to_contain_text(re.compile(r"Step \d+ of \d+:"))
    expect(rollout.locator(f"tr[data-release='{v2}'] .weight")).to_have_text("30%")
    expect(rollout.locator(f"tr[data-release='{v1}'] .weight")).to_have_text("70%")
    expect(page.locator("#rollout-announcer")).to_contain_text(f"{v2} 30%")
    # The actor's name is shown as the text it is.
    expect(rollout.locator(".rollout-state")).to_contain_text(HOSTILE_ACTOR)
    # The traffic shows in the numbers, and the analysis judges it while the step waits.
    expect(rollout.locator(f"tr[data-release='{v2}'] td").nth(1)).not_to_have_text("0")
    expect(rollout.locator(".analysis .verdict")).to_contain_text(re.compile(r"Window \d+: (pass|inconclusive)"))
    expect(rollout.locator(".analysis tbody tr")).to_have_count(2)

    rollout.get_by_role("button", name="Resume web").click()
    expect(page.locator("#notice")).to_contain_text("Resumed the rollout of web in staging")
    expect(rollout.locator(f"tr[data-release='{v2}'] .weight")).to_have_text("100%")
    expect(rollout.locator(".verifying")).to_contain_text(f"{v2} is being verified until")
    return v2


def roll_back_from_the_page(page: Any, v1: str, v2: str) -> None:
    history = page.locator("#history")
    expect(history.locator("tr", has_text=HOSTILE_ACTOR).first).to_be_visible()
    history.get_by_role("button", name=f"Roll back to {v1}").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Roll back web in staging?")
    expect(dialog).to_contain_text(f"It replaces release {v2}, which is live now.")
    dialog.get_by_role("button", name=f"Roll back to {v1}").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#notice")).to_contain_text(f"Rolled back web in staging: release {v1} is live",
                                                    timeout=60_000)


def test_keyboard_alone_reaches_the_rollback_and_escape_cancels_it(
        deployed: ExampleProject, server: Served, page: Any) -> None:
    example = deployed
    v1 = live_release(server)
    example.set_version("2")
    example.ingot("deploy", check=True)
    v2 = live_release(server)
    assert v2 != v1

    page.goto(f"{server.url}/")
    expect(page.get_by_label("API token")).to_be_focused()
    page.keyboard.type(server.token)
    page.keyboard.press("Enter")
    button = page.locator("#history").get_by_role("button", name=f"Roll back to {v1}")
    expect(button).to_be_visible()
    expect(page.locator("#main")).to_be_focused()  # signed in: focus moves to the content

    # From the top of a fresh page (the token is kept for the tab), Tab until the rollback button has
    # focus, noting the way there.
    page.reload()
    expect(button).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
    visited = []
    for _ in range(60):
        if focused_key(page) == f"rollback:web:{v1}":
            break
        page.keyboard.press("Tab")
        visited.append(page.evaluate(FOCUSED))
    else:
        pytest.fail(f"Tab never reached the rollback button; it went through {visited}")
    expect(button).to_be_focused()
    # In reading order: header controls, the section links, then the panels top to bottom.
    names = [v[1] for v in visited]
    assert names.index("env-select") < names.index("sign-out") < names.index("Services")
    sections = [v[2] for v in visited if v[2]]
    assert sections == sorted(sections, key=["services-title", "rollouts-title", "history-title"].index)
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), "the focused button shows no focus ring"

    before = (api(server, "deployments"), api(server, "ledger", tail="true", limit=1)["entries"][-1]["seq"])
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name=f"Roll back to {v1}")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(button).to_be_focused()  # back where the dialog was opened from

    # Nothing happened: the same release serves, no deployment and no ledger entry was added, across a
    # few refreshes of the page.
    def refreshes() -> int:
        return int(page.locator("#dashboard").get_attribute("data-refreshes") or 0)

    seen = refreshes()
    poll(lambda: refreshes() >= seen + 3, timeout=30, what="three refreshes of the page")
    expect(page.locator("#services tr[data-service=web] .live-release")).to_have_text(v2)
    assert example.get()["release"] == v2
    after = (api(server, "deployments"), api(server, "ledger", tail="true", limit=1)["entries"][-1]["seq"])
    assert after == before
    expect(page.locator("#notice")).to_have_text("")
    expect(button).to_be_focused()  # the one-second refresh did not take the focus away


def test_the_ledger_pages_back_and_shows_when_it_was_tampered_with(
        deployed: ExampleProject, server: Served, page: Any) -> None:
    deployed.set_version("2")
    deployed.ingot("deploy", check=True)
    newest = api(server, "ledger", tail="true", limit=1)["entries"][-1]["seq"]
    assert 20 < newest <= 40, "the paging below expects two pages of 20"
    sign_in(page, server)
    rows = page.locator("#ledger tbody tr")
    verdict = page.locator("#ledger-verify")
    expect(verdict).to_contain_text("intact")
    expect(rows).to_have_count(20)
    expect(rows.first).to_have_attribute("data-seq", str(newest))  # newest first

    page.get_by_role("button", name="Older").click()
    expect(rows.first).to_have_attribute("data-seq", str(newest - 20))
    expect(rows.last).to_have_attribute("data-seq", "1")
    expect(page.get_by_role("button", name="Older")).to_have_attribute("aria-disabled", "true")
    expect(page.get_by_role("button", name="Older")).to_be_focused()  # still where the reader was
    page.get_by_role("button", name="Newer").click()
    expect(rows).to_have_count(20)
    expect(rows.first).to_have_attribute("data-seq", re.compile(r"\d+"))
    assert int(rows.first.get_attribute("data-seq") or 0) >= newest

    # Someone edits history behind ingot's back (dropping the trigger that forbids it).
    with contextlib.closing(sqlite3.connect(deployed.state / "state.db")) as db:
        db.execute("DROP TRIGGER ledger_no_update")
        db.execute("UPDATE ledger SET actor = '<i>mallory</i>' WHERE seq = 2")
        db.commit()
    page.get_by_role("button", name="Verify again").click()
    expect(verdict).to_contain_text("tampered with")
    expect(verdict).to_contain_text("ledger entry 2: its content does not match its hash")
    expect(verdict).to_have_attribute("data-ok", "false")

