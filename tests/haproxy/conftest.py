"""Fixtures for `HAProxyRouter` tests against a real haproxy (Debian's 2.6 package).

`haproxy_bin` and `run` come from tests/support/routers.py (haproxy is provisioned when missing;
without it these tests skip, except in CI).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.routers import haproxy_bin, kill_haproxy_of, run

__all__ = ["haproxy_bin", "run", "workdir"]


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The router's workdir; a test that failed before `stop()` does not leave its haproxy running."""
    path = tmp_path / "hap"
    yield path
    kill_haproxy_of(path)
