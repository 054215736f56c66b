"""The image build key: which Containerfiles can be skipped safely."""

from __future__ import annotations

from pathlib import Path

from ingot.image_inputs import base_images, image_input_key


def test_from_lines_resolve_arg_defaults_and_skip_stage_names() -> None:
    text = ("ARG BASE=localhost/base:1\nFROM ${BASE} AS build\nRUN make\n"
            "FROM build\nFROM --platform=linux/amd64 debian@sha256:abc\n")
    assert base_images(text) == ["localhost/base:1", "debian@sha256:abc"]
    assert base_images("ARG BASE\nFROM $BASE\n") is None  # no default: the engine must decide


def test_key_changes_with_context_and_base_and_honours_ignore_files(tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text("FROM localhost/base:1\nCOPY app.py /app/\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    (tmp_path / ".containerignore").write_text("*.log\n")
    ids = {"localhost/base:1": "sha256:aaa"}
    first = image_input_key(tmp_path, ids.get, {})
    assert first is not None and first == image_input_key(tmp_path, ids.get, {})
    (tmp_path / "debug.log").write_text("noise")
    assert image_input_key(tmp_path, ids.get, {}) == first
    (tmp_path / "app.py").write_text("print(2)\n")
    second = image_input_key(tmp_path, ids.get, {})
    assert second != first
    assert image_input_key(tmp_path, {"localhost/base:1": "sha256:bbb"}.get, {}) != second
    assert image_input_key(tmp_path, {}.get, {}) is None  # base not local: not skippable
