from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ExampleProject, make_example, stop_everything


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
