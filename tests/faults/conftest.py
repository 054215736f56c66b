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
