"""Builds with steps: the spec's `build` forms, the recipe in the input key, and the dependency caches
keyed by the lockfiles' digest. (tests/integration/test_builds_any_language.py builds a real npm app.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from ingot.artifacts import ArtifactStore, BuildSteps, build_artifact, cached_build, caches
from ingot.errors import OperationFailed
from ingot.spec import ServiceSpec


def test_the_string_form_is_the_plain_build_and_keeps_release_ids() -> None:
    plain = ServiceSpec(build="app", command=["./run"])
    assert plain.build is not None and (plain.build.context, plain.build.run) == ("app", [])
    # A release's spec digest must not change for specs written before build steps existed.
    assert plain.release_fields()["build"] == "app"
    steps = ServiceSpec.model_validate({"build": {"context": "app", "run": [["npm", "ci"]]}, "command": ["x"]})
    assert steps.release_fields()["build"] == {"context": "app", "run": [["npm", "ci"]], "env": {}}


def test_lockfile_key_covers_only_the_lockfiles() -> None:
    listing = {"package-lock.json": "sha256:1", "server.js": "sha256:2"}
    key = caches.lockfile_key(listing)
    assert key is not None and key == caches.lockfile_key({**listing, "server.js": "sha256:3"})
    assert key != caches.lockfile_key({**listing, "package-lock.json": "sha256:4"})
    assert caches.lockfile_key({"server.js": "sha256:2"}) is None
    assert caches.lockfile_key({"sub/package-lock.json": "sha256:1"}) is None  # at the context's top only


def test_a_new_lockfile_gets_a_cache_seeded_from_the_newest_and_old_ones_are_pruned(tmp_path: Path) -> None:
    first = caches.open_cache(tmp_path, "web", "sha256:" + "1" * 64, owner=None)
    assert not first.hit
    (first.data / "npm").mkdir()
    (first.data / "npm" / "blob").write_text("tarball")
    again = caches.open_cache(tmp_path, "web", first.key, owner=None)  # incomplete: used, but not a hit
    assert not again.hit and (again.data / "npm" / "blob").read_text() == "tarball"
    first.mark_ready()
    assert caches.open_cache(tmp_path, "web", first.key, owner=None).hit
    second = caches.open_cache(tmp_path, "web", "sha256:" + "2" * 64, owner=None)
    assert not second.hit and (second.data / "npm" / "blob").read_text() == "tarball"
    second.mark_ready()
    for digit in "345":
        caches.open_cache(tmp_path, "web", "sha256:" + digit * 64, owner=None).mark_ready()
    caches.prune(tmp_path, "web")
    assert len(list((tmp_path / "web").iterdir())) == caches.KEEP


def test_steps_enter_the_input_key_and_a_failing_step_shows_its_output(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "requirements.txt").write_text("")  # a lockfile: the build gets a dependency cache
    make = BuildSteps.of([["sh", "-c", "mkdir out && echo built > out/file"]], {"WHO": "x"})
    built = build_artifact(store, context, steps=make, cache_name="web")
    assert (built.path / "out" / "file").read_text() == "built\n"  # what the step made is the artifact
    assert built.deps_cache is not None and not built.deps_cache_hit
    assert cached_build(store, context, steps=make) == built.digest
    assert cached_build(store, context) is None  # the plain recipe is another input
    other = BuildSteps.of(make.run, {"WHO": "y"})
    assert cached_build(store, context, steps=other) is None
    again = build_artifact(store, context, steps=other, cache_name="web")
    assert again.deps_cache_hit and again.digest == built.digest  # same output: same artifact
    failing = BuildSteps.of([["true"], ["sh", "-c", "echo 'cannot find module express' >&2; exit 4"]], {})
    with pytest.raises(OperationFailed) as caught:
        build_artifact(store, context, steps=failing)
    message = caught.value.message
    assert message.startswith("build failed: step 2 of 2 (sh -c ") and message.endswith("exited with code 4")
    assert "cannot find module express" in caught.value.details
