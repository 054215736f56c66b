"""Test-session settings that every test shares.

The edge (the machine's data plane) lives in its own home for the session, as it would on a machine
where the suite is the only user: a short private directory (its sockets must fit AF_UNIX), never
the machine's /var/lib/ingot/edge. Whatever edge the suite started is stopped at the end.

`example` and `routed` are the bundled example project, behind each kind of router for `routed`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ExampleProject, free_port, make_example, stop_edge, stop_everything

# The store's two backends (`backend`, `pg_server`: one PostgreSQL server for the session, started on first use).
pytest_plugins = ["tests.support.store_backends"]

if "INGOT_EDGE_HOME" not in os.environ:
    os.environ["INGOT_EDGE_HOME"] = tempfile.mkdtemp(prefix="ingot-edge-")
# Its shared listeners on free loopback ports, never the machine's :80 and :443 (read when the edge starts).
for _variable in ("INGOT_EDGE_HTTP", "INGOT_EDGE_HTTPS"):
    os.environ.setdefault(_variable, f"127.0.0.1:{free_port()}")
# Never Let's Encrypt from a test: a route left at `tls: auto` (the default) gets a refused connection at once
# (the tests that issue certificates point their edge at Pebble).
os.environ.setdefault("INGOT_ACME_DIRECTORY", "https://127.0.0.1:9/directory")


@pytest.fixture(scope="session", autouse=True)
def _session_edge() -> Iterator[None]:
    yield
    home = Path(os.environ["INGOT_EDGE_HOME"])
    stop_edge(home)
    if home.name.startswith("ingot-edge-"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def example(tmp_path: Path) -> Iterator[ExampleProject]:
    project = make_example(tmp_path)
    yield project
    stop_everything(project)


@pytest.fixture(params=["builtin", "haproxy"])
def routed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExampleProject]:
    """The example behind each kind of router."""
    example = make_example(tmp_path)
    if request.param == "haproxy":
        spec = example.root / "ingot.yaml"
        spec.write_text(spec.read_text().replace(f'router: {{listen: "127.0.0.1:{example.port}"}}',
                                                 f'router: {{listen: "127.0.0.1:{example.port}", kind: haproxy}}'))
    yield example
    stop_everything(example)
