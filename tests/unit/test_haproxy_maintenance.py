"""The HAProxy maintenance map's value: Retry-After and the page (base64), line breaks as spaces, a size limit."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from ingot.routers.base import ClientPolicy
from ingot.routers.haproxy_config import MAINTENANCE_PAGE_MAX, backend_lines, maintenance_value


def test_the_value_holds_retry_after_and_the_page_with_line_breaks_as_spaces() -> None:
    retry, encoded = maintenance_value(30, "<h1>Back\r\nsoon</h1>\n<p>\tdéjà\x07</p>").split("|")
    assert retry == "30"
    assert base64.b64decode(encoded).decode() == "<h1>Back soon</h1> <p>\tdéjà</p>"


def test_a_page_past_the_limit_is_refused_naming_the_limit() -> None:
    maintenance_value(5, "x" * MAINTENANCE_PAGE_MAX)
    with pytest.raises(ValueError, match=f"{MAINTENANCE_PAGE_MAX + 1} bytes.*at most {MAINTENANCE_PAGE_MAX}"):
        maintenance_value(5, "x" * (MAINTENANCE_PAGE_MAX + 1))


def test_the_backend_answers_from_its_entry_before_any_server() -> None:
    lines = backend_lines("b3", Path("/x/b3.map"), 4, ClientPolicy(), Path("/x/maint.map"))
    gate = next(i for i, line in enumerate(lines) if "http-request return status 503" in line)
    assert "be_name,map(/x/maint.map)" in lines[gate] and "b64dec" in lines[gate]
    assert gate < next(i for i, line in enumerate(lines) if "server-template" in line)
