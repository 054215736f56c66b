"""The dashboard's scripts parse: a syntax error (a function declared twice in a module) blanks the whole page,
and only the Chromium tests would otherwise see it, minutes later. Node parses them without running them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "src" / "ingot" / "api" / "static"
CLASSIC = {"docs.js"}  # loaded with a plain <script>; the rest are ES modules (app.js imports them)


def parse_error(path: Path, scratch: Path) -> str | None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to check the dashboard's scripts (scripts/test installs nodejs)")
    # By extension (.mjs: a module, .cjs: a plain script), which every Node version understands.
    copy = scratch / (path.stem + (".cjs" if path.name in CLASSIC else ".mjs"))
    copy.write_bytes(path.read_bytes())
    done = subprocess.run([node, "--check", str(copy)], capture_output=True, text=True, timeout=60)
    return None if done.returncode == 0 else done.stderr.strip()


@pytest.mark.parametrize("script", sorted(p.name for p in STATIC.glob("*.js")))
def test_each_dashboard_script_parses(script: str, tmp_path: Path) -> None:
    assert parse_error(STATIC / script, tmp_path) is None


def test_a_function_declared_twice_in_a_module_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "broken.js"
    broken.write_text("export function show() {}\nfunction show() {}\n")
    assert "already been declared" in (parse_error(broken, tmp_path) or "")
