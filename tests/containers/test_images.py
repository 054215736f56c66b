"""DockerRuntime images against the real engine: build, tag, resolve (digests only), remove."""

from __future__ import annotations

import uuid
from pathlib import Path

import docker  # type: ignore[import-untyped]
import pytest

from ingot.errors import OperationFailed, UserInputError
from ingot.runtimes.docker import DockerRuntime, ImageInUse, container_name
from tests.containers.helpers import BASE_IMAGE, BuiltImage, new_request, wait_for


def test_build_streams_output_and_an_unchanged_context_gives_the_same_image_id(
    runtime: DockerRuntime, app_image: BuiltImage
) -> None:
    assert app_image.image_id.startswith("sha256:") and len(app_image.image_id) == 71
    assert any("step" in line.lower() for line in app_image.output), app_image.output

    output: list[str] = []
    again = runtime.build_image(app_image.context, tag=app_image.tag, build_args={"BASE": BASE_IMAGE},
                                on_output=output.append)
    assert again == app_image.image_id
    assert output and all("\n" not in line for line in output)


def test_ignored_files_are_not_in_the_context(runtime: DockerRuntime, tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY . /ctx/\n")
    (tmp_path / ".containerignore").write_text("# local state\n.ingot\n*.log\n")
    (tmp_path / ".dockerignore").write_text("nothing-here\n")  # .containerignore wins, as on Podman
    tag = f"localhost/ingot-test-ignore:{uuid.uuid4().hex}"  # this test's own: runs may overlap
    (tmp_path / "app.py").write_text(f"print({tag!r})\n")
    (tmp_path / ".ingot").mkdir()
    (tmp_path / ".ingot" / "state.db").write_text("1")
    (tmp_path / "debug.log").write_text("1")
    first = runtime.build_image(tmp_path, tag=tag, build_args={},
                                on_output=lambda line: None)
    try:
        # Changing only ignored files leaves the context, so the image, as it was.
        (tmp_path / ".ingot" / "state.db").write_text("2")
        (tmp_path / "debug.log").write_text("2")
        assert runtime.build_image(tmp_path, tag=tag, build_args={},
                                   on_output=lambda line: None) == first
        (tmp_path / "app.py").write_text("print('changed')\n")
        changed = runtime.build_image(tmp_path, tag=tag, build_args={},
                                      on_output=lambda line: None)
        assert changed != first
        runtime.remove_image(changed)
    finally:
        runtime.remove_image(first)


def test_a_dockerfile_is_used_when_there_is_no_containerfile(runtime: DockerRuntime, tmp_path: Path) -> None:
    tag = f"localhost/ingot-test-dockerfile:{uuid.uuid4().hex}"
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nLABEL made-by={tag}\n")
    image_id = runtime.build_image(tmp_path, tag=tag, build_args={},
                                   on_output=lambda line: None)
    try:
        assert runtime.image_exists(image_id)
    finally:
        runtime.remove_image(image_id)


def test_a_missing_containerfile_is_a_user_error_naming_the_directory(runtime: DockerRuntime,
                                                                      tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('hi')\n")
    with pytest.raises(UserInputError) as failure:
        runtime.build_image(tmp_path, tag="localhost/ingot-test-none:latest", build_args={},
                            on_output=lambda line: None)
    assert str(tmp_path) in failure.value.message
    assert "Containerfile" in failure.value.message


def test_a_failed_build_reports_the_last_output_lines(runtime: DockerRuntime, tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo about to fail && false\n")
    seen: list[str] = []
    with pytest.raises(OperationFailed) as failure:
        runtime.build_image(tmp_path, tag="localhost/ingot-test-fails:latest", build_args={}, on_output=seen.append)
    assert str(tmp_path) in failure.value.message
    assert "about to fail" in failure.value.details
    assert "about to fail" in seen
    assert len(failure.value.details) <= 21


def test_a_mutable_tag_is_refused_with_how_to_pin(runtime: DockerRuntime, app_image: BuiltImage) -> None:
    for ref in (app_image.tag, "python", "registry.example:5000/team/app:1.2"):
        with pytest.raises(UserInputError) as failure:
            runtime.resolve_image(ref, allow_mutable_tag=False)
        text = str(failure.value)
        assert "mutable tag" in text and "@sha256:" in text and "allow_mutable_tag: true" in text
    assert "registry.example:5000/team/app@sha256:" in str(failure.value)


def test_allow_mutable_tag_resolves_the_tag_to_its_image_id(runtime: DockerRuntime, app_image: BuiltImage) -> None:
    assert runtime.resolve_image(app_image.tag, allow_mutable_tag=True) == app_image.image_id


def test_a_digest_reference_resolves_to_the_local_image_id(runtime: DockerRuntime, engine: docker.DockerClient,
                                                           app_image: BuiltImage) -> None:
    repository = app_image.tag.rsplit(":", 1)[0]
    # Pinned by the image ID: what a locally built image (never pushed) always has.
    assert runtime.resolve_image(f"{repository}@{app_image.image_id}", allow_mutable_tag=False) == app_image.image_id
    assert runtime.resolve_image(app_image.image_id, allow_mutable_tag=False) == app_image.image_id
    # Pinned by a repository digest: Podman gives local images one, Docker Engine only pushed or pulled ones.
    for repo_digest in engine.images.get(app_image.image_id).attrs.get("RepoDigests") or []:
        assert runtime.resolve_image(repo_digest, allow_mutable_tag=False) == app_image.image_id


def test_a_digest_that_is_not_local_is_an_error(runtime: DockerRuntime) -> None:
    with pytest.raises(OperationFailed) as failure:
        runtime.resolve_image("example.org/app@sha256:" + "ab" * 32, allow_mutable_tag=False)
    assert "not in the container engine" in failure.value.message
    assert any("no registry is reachable" in line for line in failure.value.details)
    with pytest.raises(UserInputError):
        runtime.resolve_image("example.org/app@sha256:short", allow_mutable_tag=False)


def test_remove_image_is_refused_while_a_container_uses_it(runtime: DockerRuntime, tmp_path: Path,
                                                           project: str) -> None:
    # An image of this test's own, so removing it cannot disturb the session's app image.
    (tmp_path / "Containerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY marker /marker\n")
    (tmp_path / "marker").write_text(f"{project}\n")
    image_id = runtime.build_image(tmp_path, tag=f"localhost/ingot-test-{project}:build", build_args={},
                                   on_output=lambda line: None)
    runtime.tag_image(image_id, f"localhost/ingot-test-{project}", "second")
    assert runtime.resolve_image(f"localhost/ingot-test-{project}:second", allow_mutable_tag=True) == image_id

    row = runtime.start(new_request(project, image_id, command=("sleep", "600")))
    assert runtime.image_users(image_id) == [container_name(project, "staging", row.id)]
    with pytest.raises(ImageInUse) as failure:
        runtime.remove_image(image_id)
    assert "still used" in failure.value.message and failure.value.users == runtime.image_users(image_id)
    assert runtime.image_exists(image_id)

    runtime.stop(row, timeout=0)
    # stop() returns once the container has exited; it is removed in the background (its docstring).
    wait_for(lambda: runtime.image_users(image_id) == [], what="the stopped container to be removed", timeout=15)
    runtime.remove_image(image_id)
    assert not runtime.image_exists(image_id)
    assert not runtime.image_exists(f"localhost/ingot-test-{project}:second")
    runtime.remove_image(image_id)  # already gone: nothing to do


def test_tag_image_of_a_missing_image_fails(runtime: DockerRuntime) -> None:
    with pytest.raises(OperationFailed):
        runtime.tag_image("sha256:" + "0" * 64, "localhost/ingot-test-missing", "x")
