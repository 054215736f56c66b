"""Listen addresses: one parser for `router.listen`, `serve --listen` and the edge's listeners; a bad one
fails `ingot validate` (exit 2) naming the file, line, key path and what is expected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingot.addresses import split_address


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("localhost:1", ("localhost", 1)),
    ("app.internal:65535", ("app.internal", 65535)), ("[::1]:8080", ("::1", 8080)),
    ("0.0.0.0:80", ("0.0.0.0", 80)), ("*:80", ("*", 80)),
])
def test_good_addresses(value: str, expected: tuple[str, int]) -> None:
    assert split_address(value) == expected


@pytest.mark.parametrize(("value", "says"), [
    ("https://example.com:443", "not a URL"), ("http://127.0.0.1:8080", "not a URL"),
    ("127.0.0.1:8080:9", "one ':' before the port"), ("::1:8080", "in brackets"),
    ("[nothere]:80", "an IPv6 address in brackets"), ("127.0.0.1:0", "between 1 and 65535"),
    ("127.0.0.1:70000", "between 1 and 65535"), ("localhost", "expected HOST:PORT"),
    (":8080", "expected HOST:PORT"), ("host:http", "the port must be a number"),
    ("my host:80", "not a host name or IP address"), ("300.1.1.1:80", "not a host name or IP address"),
    ("example.com/api:80", "not a host name or IP address"),
])
def test_bad_addresses_say_what_is_expected(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        split_address(value)
    assert split_address(":443", allow_any=True) == ("", 443)


def test_validate_names_file_line_and_key_of_each_bad_listen(tmp_path: Path) -> None:
    (tmp_path / "ingot.yaml").write_text(
        "project: hi\nservices:\n  web:\n    command: [a]\n    router: {listen: \"https://example.com:8443\"}\n"
        "environments:\n  prod:\n    services:\n      web: {router: {listen: \"127.0.0.1:8080:1\"}}\n")
    done = subprocess.run([sys.executable, "-m", "ingot", "validate"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "ingot.yaml:5: services.web.router.listen: expected HOST:PORT such as 127.0.0.1:8080, not a URL" \
        in done.stderr
    assert "ingot.yaml:9: environments.prod.services.web.router.listen: expected HOST:PORT" in done.stderr
