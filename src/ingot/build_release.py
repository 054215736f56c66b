"""Build and release: turning a service's source (or pinned image) into a signed, immutable release."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ingot import config_ops, config_store, ledger
from ingot.actor import current_actor
from ingot.artifacts import ArtifactStore, BuildResult, BuildSteps, build_artifact, cached_build
from ingot.canonical import content_digest
from ingot.errors import IngotError, UserInputError
from ingot.image_inputs import image_input_key
from ingot.project import Project
from ingot.releases import new_release
from ingot.releases import release_id as make_release_id
from ingot.runtimes.registry import Runtimes
from ingot.signing import load_or_create_key, pin_key, pin_path
from ingot.spec import ServiceSpec
from ingot.spec.loader import key_line
from ingot.store import ReleaseRow

OnOutput = Callable[[str], None]
EMPTY_CONFIG: dict[str, Any] = {"values": {}}  # the snapshot of a service with no config or secrets
IMAGE_REPOSITORY = "ingot/{project}-{service}"


@dataclass(frozen=True)
class Built:
    """What a build produced: an artifact digest (process) or an image ID (containers)."""

    digest: str
    reused: bool
    input_key: str
    detail: str
    replaced_corrupt: tuple[str, ...] = ()  # the cached artifact was damaged, and rebuilt: what was wrong
    deps_cache: str | None = None  # the lockfiles' digest keying the dependency cache the build used
    deps_cache_hit: bool = False  # that cache was complete: nothing new needed downloading

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def context_dir(project: Project, service: ServiceSpec, environment: str | None = None,
                name: str | None = None) -> Path:
    """The service's build context, which must stay inside the spec's directory or its git repository.

    A spec may come from anyone who can push to the watched branch: `build: /root` or `build: ../..` must
    not make a build read (and store, and run from) whatever the host holds. Symlinks are resolved first,
    so a link named in `build:` cannot lead out either.
    """
    root = project.spec.root_dir.resolve()
    given = service.build.context if service.build is not None else "."
    context = (root / given).resolve()
    allowed = [root, *([repo] if (repo := _git_toplevel(root)) is not None else [])]
    if not any(context.is_relative_to(place) for place in allowed):
        loc = _build_key(project, environment, name)
        line = key_line(project.spec.path, loc) if loc else None
        where = f"{project.spec.path}:{line}" if line else str(project.spec.path)
        key = ".".join(loc) if loc else "build"
        raise UserInputError(
            f"{where}: {key}: {given!r} resolves to {context}, outside the spec's directory",
            details=[f"a build context must be inside {' or '.join(map(str, allowed))}"
                     + (" (the git repository)" if len(allowed) > 1 else "")],
        )
    return context


def _build_key(project: Project, environment: str | None, name: str | None) -> tuple[str, ...]:
    if name is None:
        return ()
    env_spec = project.spec.environments.get(environment) if environment is not None else None
    if env_spec is not None and "build" in (env_spec.services.get(name) or {}):
        return ("environments", str(environment), "services", name, "build")
    return ("services", name, "build")


def _git_toplevel(directory: Path) -> Path | None:
    """The work tree root of the git repository holding `directory` (a `.git` dir, or file for worktrees)."""
    for candidate in (directory, *directory.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def spec_exclusion(project: Project, context: Path) -> list[str]:
    """The spec is desired state, not part of what runs: editing replicas must not rebuild the artifact.
    Nor are the pinned public keys beside it: its own and those of the other specs there (another
    project's first deploy writes one into this project's context)."""
    spec_dir = project.spec.path.resolve().parent
    pins = {pin_path(p) for p in (*spec_dir.glob("*.yaml"), *spec_dir.glob("*.yml"))}
    excluded = []
    for path in (project.spec.path, project.paths.pin, *sorted(pins)):
        if path is None:
            continue
        try:
            excluded.append("/" + path.resolve().relative_to(context.resolve()).as_posix())
        except ValueError:
            continue
    return excluded


def build(project: Project, environment: str, name: str, on_output: OnOutput | None = None, *,
          rebuild: bool = False) -> Built:
    """The service's artifact: reused from the build cache when its input is unchanged and the stored copy
    verifies, else built (`rebuild`: built afresh in any case)."""
    service = project.spec.service_for(environment, name)
    context = context_dir(project, service, environment, name) if service.build is not None else None
    try:
        built = _build_for(project, environment, name, service, context, on_output, rebuild)
    except IngotError as exc:
        ledger.record(project.store, actor=current_actor(), action="build.fail", environment=environment,
                      service=name, payload={"context": str(context), "error": exc.message, "details": exc.details})
        raise
    record_build(project, environment, name, service, context, built)
    return built


def record_build(project: Project, environment: str, name: str, service: ServiceSpec, context: Path | None,
                 built: Built) -> None:
    """The artifact known under its input key, and the build (or its reuse) in the ledger."""
    project.store.record_artifact(built.digest, name, built.input_key)
    ledger.record(project.store, actor=current_actor(), action="build", environment=environment, service=name,
                  subject=built.digest,
                  payload={"context": str(context), "reused": built.reused, "input_key": built.input_key,
                           "runtime": service.runtime,
                           **({"deps_cache": {"key": built.deps_cache, "hit": built.deps_cache_hit}}
                              if built.deps_cache else {}),
                           **({"replaced_corrupt": list(built.replaced_corrupt)} if built.replaced_corrupt else {})})


def _build_for(project: Project, environment: str, name: str, service: ServiceSpec, context: Path | None,
               on_output: OnOutput | None, rebuild: bool = False) -> Built:
    """The local build, or for a Kubernetes target an image the cluster can pull (see `ingot.kube.images`)."""
    env_spec = project.spec.environments.get(environment)
    cluster = env_spec.target if env_spec is not None else None
    if cluster is None:
        return _build(project, name, service, context, on_output, rebuild)
    from ingot.kube import images

    if service.image is not None:
        return Built(service.image, True, f"image:{service.image}", "pinned by digest; the cluster pulls it")
    assert cluster.registry is not None  # the spec refuses a build for a cluster without a registry
    local = _build(project, name, service.model_copy(update={"runtime": "docker"}), context, on_output, rebuild)
    project.store.record_artifact(local.digest, name, local.input_key)  # the next build can reuse it
    repo = images.repository(cluster.registry, project.spec.project, name)
    key = images.PUSHED.format(image=local.digest, repository=repo)
    pushed = project.store.artifact_for_input(name, key)
    if pushed is None:
        pushed = images.push(Runtimes().get("docker"), local.digest, repo, on_output or (lambda _line: None))
        project.store.record_artifact(pushed, name, key)
    return Built(pushed, local.reused, f"cluster:{repo}:{local.input_key}", f"{local.digest} pushed to {repo}")


def _build(project: Project, name: str, service: ServiceSpec, context: Path | None,
           on_output: OnOutput | None, rebuild: bool = False) -> Built:
    if service.runtime == "process":
        assert context is not None
        result: BuildResult = build_artifact(project.artifacts, context, on_output=on_output,
                                             exclude=spec_exclusion(project, context), rebuild=rebuild,
                                             steps=build_steps(service), cache_name=name)
        return Built(result.digest, result.reused, result.input_key, str(result.path), result.replaced_corrupt,
                     result.deps_cache, result.deps_cache_hit)
    engine: Any = Runtimes().get(service.runtime)
    if service.image is not None:
        image_id = engine.resolve_image(service.image, allow_mutable_tag=service.allow_mutable_tag)
        return Built(image_id, True, f"image:{service.image}", f"pinned from {service.image}")
    assert context is not None
    repository = IMAGE_REPOSITORY.format(project=project.spec.project, service=name)
    key = image_input_key(context, engine.local_image_id, {})
    cached = project.store.artifact_for_input(name, key) if key and not rebuild else None
    if cached and engine.image_exists(cached):
        return Built(cached, True, key or "", "unchanged context and base images: image reused")
    known = set(project.store.artifact_digests(name))
    image_id = engine.build_image(context, tag=f"{repository}:build", on_output=on_output or (lambda _l: None),
                                  no_cache=rebuild)
    return Built(image_id, image_id in known, key or f"context:{context}", f"{repository}:build")


def expected_release_id(project: Project, environment: str, name: str, service: ServiceSpec) -> str | None:
    """The release a deploy would make, if its artifact is already built (process runtime only)."""
    if service.runtime != "process":
        return None
    context = context_dir(project, service, environment, name)
    digest = cached_build(project.artifacts, context, exclude=spec_exclusion(project, context),
                          steps=build_steps(service))
    if digest is None:
        return None
    config, _sourced = config_ops.release_snapshot(project, environment, name, service, record_failure=False)
    return make_release_id(project.spec.project, name, digest, content_digest(config),
                           content_digest(service.release_fields()))


def build_steps(service: ServiceSpec) -> BuildSteps | None:
    """The spec's build steps, or None for the plain recipe (the context, and its requirements.txt)."""
    if service.build is None or not service.build.run:
        return None
    return BuildSteps.of(service.build.run, service.build.env)


def release(project: Project, environment: str, name: str, artifact: Built,
            commit: str | None = None) -> tuple[ReleaseRow, bool]:
    """The release of this artifact with this spec and config snapshot; created (and signed) only if it is new."""
    service = project.spec.service_for(environment, name)
    config, sourced = config_ops.release_config_read(project, environment, name, service)
    key = signing_key(project)
    candidate = new_release(key=key, project=project.spec.project, service=name,
                            artifact_digest=artifact.digest, spec=service.release_fields(),
                            config=config, actor=current_actor(), commit=commit)
    existing = project.store.get_release(candidate.id)
    if existing is not None:
        return existing, False
    if service.runtime != "process" and "@" not in artifact.digest:  # a pullable repo@sha256 is a cluster's
        # The release's own tag, for people and tools; ingot itself only ever runs the image ID.
        engine: Any = Runtimes().get(service.runtime)
        engine.tag_image(artifact.digest, IMAGE_REPOSITORY.format(project=project.spec.project, service=name),
                         candidate.id)
    with project.store.begin() as conn:
        project.store.insert_release(conn, candidate)
        ledger.append(conn, actor=candidate.created_by, action="release", environment=environment, service=name,
                      subject=candidate.id,
                      payload={"artifact": candidate.artifact_digest, "config": candidate.config_digest,
                               "spec": candidate.spec_digest, "commit": commit,
                               **_secret_versions(candidate),
                               # Which revision of the config source the values came from (keys, no values).
                               **({"config_source": sourced.record(service.config)} if sourced else {})})
    return candidate, True


def signing_key(project: Project) -> Ed25519PrivateKey:
    """The project's signing key, checked against its pin (see `check_pin`)."""
    if project.paths.pin is None:
        return load_or_create_key(project.paths.keys)
    return pin_key(project.paths.pin, project.paths.keys, project=project.spec.project)[0]


def check_pin(project: Project) -> Path | None:
    """Refuse (exit 2) a signing key that does not match the project's pin; write the pin if it is missing,
    returning its path then (the caller tells the user to commit it)."""
    if project.paths.pin is None:
        return None
    _key, written = pin_key(project.paths.pin, project.paths.keys, project=project.spec.project)
    return project.paths.pin if written else None


def _secret_versions(release: ReleaseRow) -> dict[str, Any]:
    """For the ledger: which secret versions a release uses (names and numbers, never values)."""
    refs = config_store.secret_refs(release)
    return {"secrets": {name: ref["version"] for name, ref in refs.items()}} if refs else {}


def artifact_available(artifacts: ArtifactStore, release: ReleaseRow, runtimes: Runtimes | None = None) -> bool:
    """Whether the release's artifact (or image) is still there to start instances from."""
    runtime = str(release.spec.get("runtime", "process"))
    if "@" in release.artifact_digest:
        return True  # a cluster's image, in its registry: nodes pull it, this machine cannot tell
    if runtime == "process":
        return artifacts.has(release.artifact_digest)
    engine: Any = (runtimes or Runtimes()).get(runtime)
    return bool(engine.image_exists(release.artifact_digest))
