"""Builds with steps, in any language: a real Express app from the npm registry (examples/express),
built with `npm ci` and `npm run build` as the build user, deployed, changed and rolled back under load;
the second build of an unchanged lockfile installs from the dependency cache, with no network."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import REPO, TEST_MIN_READY, ExampleProject, free_port, load, stop_everything

EXPRESS = REPO / "examples" / "express"

pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed (scripts/test installs it)")


@pytest.fixture
def express(tmp_path: Path) -> Iterator[ExampleProject]:
    root = tmp_path / "express"
    shutil.copytree(EXPRESS, root, ignore=shutil.ignore_patterns(".ingot", "node_modules", "dist", "ingot.pub"))
    port = free_port()
    spec = (root / "ingot.yaml").read_text()
    spec = spec.replace('listen: "127.0.0.1:8080"', f'listen: "127.0.0.1:{port}"')
    spec = spec.replace("min_ready: 3s", f"min_ready: {TEST_MIN_READY}")
    (root / "ingot.yaml").write_text(spec)
    project = ExampleProject(root, port, _project="express")
    yield project
    stop_everything(project)


def set_version(app: ExampleProject, version: str) -> None:
    (app.root / "src" / "version.js").write_text(f'module.exports = {{ VERSION: "{version}" }};\n')


def set_build_env(app: ExampleProject, env: str) -> None:
    spec = app.root / "ingot.yaml"
    spec.write_text(re.sub(r"^      env: \{.*\}$", f"      env: {{{env}}}", spec.read_text(), count=1, flags=re.M))


def builds(app: ExampleProject) -> list[dict[str, Any]]:
    """The ledger's build records, oldest first."""
    entries = app.ingot("audit", "log", "--json", "--limit", "1000", check=True).json
    return sorted((e for e in entries if e["action"] == "build"), key=lambda e: int(e["seq"]))


def assert_clean(report: dict[str, Any], allowed: set[str]) -> None:
    assert report["failures"] == [], f"failed requests: {report['failures'][:5]}"
    assert set(report["versions"]) <= allowed, report["versions"]
    assert int(report["requests"]) > 50


def test_express_app_deploys_changes_and_rolls_back_with_zero_failed_requests(express: ExampleProject,
                                                                               tmp_path: Path) -> None:
    started = time.monotonic()
    first = express.ingot("deploy", timeout=300)
    first_s = time.monotonic() - started
    assert first.code == 0, first.out + first.err
    assert "dependency cache miss" in first.out and "step 1/2: npm ci" in first.out, first.out
    one = express.get()
    assert one["version"] == "1"  # from dist/, which only `npm run build` makes: the build's output is the artifact
    assert express.ingot("drift", "--json").json == []  # `npm start` wrote nothing into the checkout

    # The source changes, the lockfile does not: the build installs from the cache alone. npm's offline
    # mode fails any request it would have to send (ENOTCACHED), so success proves nothing was downloaded.
    set_version(express, "2")
    set_build_env(express, 'NODE_ENV: production, npm_config_offline: "true"')
    with load(express.url, tmp_path) as during_deploy:
        started = time.monotonic()
        second = express.ingot("deploy", timeout=300)
        second_s = time.monotonic() - started
    assert second.code == 0, second.out + second.err
    assert "dependency cache hit" in second.out, second.out
    assert_clean(during_deploy, {"1", "2"})
    assert express.get()["version"] == "2"
    earliest, latest = builds(express)
    assert latest["payload"]["deps_cache"] == {"key": earliest["payload"]["deps_cache"]["key"], "hit": True}
    assert earliest["payload"]["deps_cache"]["hit"] is False
    print(f"deploy with a cold dependency cache {first_s:.1f}s, with the cache {second_s:.1f}s")

    with load(express.url, tmp_path) as during_rollback:
        express.ingot("rollback", check=True)
    assert_clean(during_rollback, {"1", "2"})
    assert express.get() == one
    assert express.ingot("drift", "--json").json == []


def test_a_failing_step_fails_the_build_with_its_output_and_the_step(express: ExampleProject) -> None:
    spec = express.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace(
        "run: [[npm, ci], [npm, run, build]]",
        """run: [[node, -e, "console.error('src/app.ts: error TS2322'); process.exit(3)"]]"""))
    result = express.ingot("build")
    assert result.code == 1, result.out + result.err
    assert "build failed: step 1 of 1 (node -e" in result.err and "exited with code 3" in result.err, result.err
    assert "src/app.ts: error TS2322" in result.err  # the tail of its output, in the error itself
    [failed] = [e for e in express.ingot("audit", "log", "--json", check=True).json if e["action"] == "build.fail"]
    assert "step 1 of 1" in failed["payload"]["error"]


def test_a_bad_build_spec_is_refused_naming_the_key(express: ExampleProject) -> None:
    spec = express.root / "ingot.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("run: [[npm, ci], [npm, run, build]]", "run: [npm, ci]"))
    result = express.ingot("validate")
    assert result.code == 2, result.out + result.err
    assert "ingot.yaml:9: services.web.build.run: expected a list of steps" in result.err, result.err
    spec.write_text(text.replace("context: .", "contxt: ."))
    result = express.ingot("deploy")
    assert result.code == 2 and "services.web.build.contxt: unknown key" in result.err, result.err
    assert "Traceback" not in result.err
