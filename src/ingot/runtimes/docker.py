"""Instances as containers on Docker Engine or Podman, through the Docker-compatible API.

An instance is a fresh container created from an image ID (never a tag, which could move), hardened
by default (read-only root, tmpfs scratch space, no capabilities, no privilege gain), labelled with
what it is, and published on 127.0.0.1 only: traffic reaches it through ingot's router. There is no
restart policy: a dead instance is replaced by ingot, not restarted by the engine. As for every
runtime there is `start`, `stop` and `observe`, and no update or exec.

The drift helpers (`facts`, `changed_files`, `labelled`) report what the engine says, without
judging it; the drift rules live elsewhere.
"""

from __future__ import annotations

import codecs
import math
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import IO, Any

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.types import LogConfig
from docker.utils.build import tar as context_tar

from ingot import volumes
from ingot.errors import OperationFailed, UserInputError
from ingot.runtimes.base import LOG_BACKUPS, InstanceRequest, Observation, log_max_bytes
from ingot.runtimes.engine import ContainerEngineUnavailable, connect_engine, is_podman
from ingot.spec.models import expand_own
from ingot.store import InstanceRow

__all__ = ["ContainerEngineUnavailable", "ContainerFacts", "DockerRuntime", "ImageInUse", "container_name",
           "without_engine_noise"]

LOCALHOST = "127.0.0.1"
CONTAINERFILES = ("Containerfile", "Dockerfile")
IGNORE_FILES = (".containerignore", ".dockerignore")
BUILD_TAIL_LINES = 20
# Same options on both engines (their defaults differ); size is left to the kernel's default.
TMPFS_OPTIONS = "rw,nosuid,nodev,mode=1777"
DIFF_KINDS = {0: "modified", 1: "added", 2: "deleted"}
# Files the engine itself puts into every container: Podman's /run/.containerenv, Docker's
# /.dockerenv, and the bind-mounted name resolution files. They say nothing about the instance.
ENGINE_WRITTEN = ("/run/.containerenv", "/.dockerenv", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf",
                  "/run/secrets")
IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


class ImageInUse(OperationFailed):
    """An image was not removed because containers use it (images are shared: an image ID is its
    content, so identical builds of two projects are one image)."""

    def __init__(self, image_id: str, users: list[str]) -> None:
        super().__init__(
            f"image {image_id} is still used by {len(users)} container(s); it was not removed",
            details=[*(f"  {name}" for name in users), "stop or remove those containers first"],
        )
        self.image_id = image_id
        self.users = users


@dataclass(frozen=True)
class ContainerFacts:
    """What the engine reports about one container: facts only, no judgement."""

    container_id: str
    image_id: str
    env: dict[str, str]  # the effective environment: the image's own variables included
    labels: dict[str, str]
    running: bool
    exit_code: int | None  # None while running
    name: str


def containers_labelled(client: Any, label: str) -> list[Any]:
    """Every container (running or not) with `label`, skipping any removed while it is listed.

    The SDK's own `ignore_removed` only skips a 404; Podman answers the inspection of a container
    being removed with a 500 "no such container", which would fail a listing that merely raced a stop.
    """
    found = []
    for summary in client.api.containers(all=True, filters={"label": label}):
        try:
            found.append(client.containers.get(summary["Id"]))
        except NotFound:
            continue
        except APIError as exc:
            if "no such container" not in str(exc).lower():
                raise
    return found


def container_name(project: str, environment: str, instance_id: str) -> str:
    """`ingot-<project>-<environment>-<instance>`, with what engines refuse in names made `-`."""
    return NAME_UNSAFE.sub("-", f"ingot-{project}-{environment}-{instance_id}")


class DockerRuntime:
    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        # Without a client, each call asks connect_engine(), which caches per process: constructing
        # the runtime needs no engine, and the agent reconnects after DOCKER_HOST changes.
        self._client = client
        # Image ID -> its configured user. An image ID is its content, so this never goes stale.
        self._image_users: dict[str, str] = {}
        # Container ID -> the socket attached to its stdin (and TTY) before it started: `feed_stdin` or
        # `terminal` takes it over.
        self._attached: dict[str, Any] = {}
        # (volume, mount path, owner) given to its owner on Docker Engine (see `_own_volumes`).
        self._owned_volumes: set[tuple[str, str, str]] = set()

    @property
    def client(self) -> docker.DockerClient:
        return self._client if self._client is not None else connect_engine()

    # -- instances -------------------------------------------------------------------------------

    def start(self, request: InstanceRequest) -> InstanceRow:
        name = container_name(request.project, request.environment, request.instance_id)
        what = f"instance {request.instance_id} of {request.service} (container {name})"
        if not request.image:
            raise OperationFailed(f"{what} could not start: the docker runtime needs an image ID")
        with _engine_errors(f"{what} could not start"):
            try:
                user = self._user_for(request, what)
                podman = is_podman(self.client)
                if request.volumes and not podman:
                    self._own_volumes(request, user, what)
                container = self.client.containers.create(**_create_arguments(request, name, user, podman))
            except NotFound as exc:
                raise OperationFailed(
                    f"{what} could not start: image {request.image} is not in the container engine",
                    details=[f"engine: {_explain(exc)}", *_LOAD_HINT],
                ) from exc
            attached = None
            try:
                if request.terminal or request.stdin:
                    # Before the start, as `docker run -i` does: what a TTY shows first reaches the terminal
                    # too, and stdin is never attached to a container that has already exited (Podman 4.3
                    # then resets it to "created" and forgets its exit code: `ingot run` exited 1).
                    outputs = {"stdout": 1, "stderr": 1} if request.terminal else {}
                    attached = container.attach_socket(params={"stdin": 1, "stream": 1, **outputs})
                container.start()
                container.reload()
                port = 0
                # A one-off takes no traffic, and its ending (at once or not) is its result, observed as a
                # process's is: only a serving instance must be found running, with its port published.
                if not request.oneoff:
                    _fail_if_exited(container, what)
                    if request.container_port is not None:
                        port = _published_port(container.attrs, request.container_port)
            except BaseException:
                # A container that never served must not linger with the instance's name and labels.
                if attached is not None:
                    attached.close()
                _remove_quietly(container)
                raise
            if attached is not None:
                self._attached[str(container.id)] = attached
        return InstanceRow(
            id=request.instance_id,
            environment=request.environment,
            service=request.service,
            release_id=request.release_id,
            runtime=self.name,
            pid=_main_pid(container.attrs),
            proc_start=None,
            host=LOCALHOST,
            port=port,
            log_path=str(request.log_path),
            started_at=time.time(),
            stopped_at=None,
            state="starting",
            handle=str(container.id),
        )

    def _user_for(self, request: InstanceRequest, what: str) -> str | None:
        """The user to run as: `run_as_user` if given; else the image's own, which `run_as_non_root`
        requires to be a numeric non-root uid (Kubernetes' rule: a name cannot be checked unrun)."""
        hardening = request.hardening
        if hardening.run_as_user is not None:
            return str(hardening.run_as_user)
        if not hardening.run_as_non_root:
            return None
        image = str(request.image)
        configured = self._image_users.get(image)
        if configured is None:
            attrs = self.client.images.get(image).attrs  # NotFound: the caller's "not in the engine"
            configured = str((attrs.get("Config") or {}).get("User") or "")
            self._image_users[image] = configured
        uid = configured.split(":", 1)[0]
        if uid.isdigit() and int(uid) != 0:
            return None  # the image's own user, as the engine would pick it
        why = ("runs as root (it sets no USER)" if not configured else
               f"runs as root (USER {configured})" if uid in ("0", "root") else
               f"names its user {configured!r}, not a numeric uid, so it cannot be checked to be non-root")
        raise OperationFailed(
            f"{what} was not started: image {image} {why}, and security.run_as_non_root is on",
            details=["give the service a non-root uid: security: {run_as_user: 10001} (any uid works with the "
                     "read-only root filesystem), or set a numeric USER (e.g. USER 10001) in its Containerfile",
                     "or, to run it as root, set security.run_as_non_root: false with a reason"],
        )

    def _own_volumes(self, request: InstanceRequest, user: str | None, what: str) -> None:
        """On Docker Engine, give each of the request's volumes to the user its instance runs as, once.

        A fresh Docker volume takes the image's ownership of the mount path (root's, when the image does not
        have the path), so a non-root instance could not write to it, and Docker has no mount option to
        change that (Podman's `U`, used there, chowns it at every mount). So a short helper container does
        it: root, but with CAP_CHOWN as its only capability, no network, a read-only root, the service's
        own image (no other image need be there) and the volume mounted where the service mounts it (so
        that Docker's copy of the image's content into a fresh volume happens first, and cannot undo it).
        Only the volume's top directory is chowned: files in it keep their owners. Once per volume and
        owner for this runtime object (the agent's lives as long as it does)."""
        owner = user if user is not None else self._image_users.get(str(request.image), "")
        uid = owner.split(":", 1)[0]
        if not uid.isdigit() or int(uid) == 0:
            return  # root, or a user the engine resolves by name (only with run_as_non_root off): left as is
        for mount in request.volumes:
            if (mount.source, mount.target, owner) in self._owned_volumes:
                continue
            helper = f"{mount.source}-chown-{os.urandom(3).hex()}"
            try:
                self.client.containers.run(
                    request.image, entrypoint=["chown", owner, mount.target], command=[], user="0",
                    cap_drop=["ALL"], cap_add=["CHOWN"], security_opt=["no-new-privileges"], network_mode="none",
                    read_only=True, remove=True, stdout=True, stderr=True,
                    volumes={mount.source: {"bind": mount.target, "mode": "rw"}},
                    labels={"ingot.project": request.project, "ingot.volume": mount.name}, name=helper)
            except (docker.errors.ContainerError, APIError) as exc:
                # An image without chown fails to start it: no helper is left behind either way.
                _ignore_not_found(partial(self._remove_by_name, helper))
                said = bytes(getattr(exc, "stderr", None) or b"").decode("utf-8", "replace").strip()
                raise OperationFailed(
                    f"{what} could not start: its volume {mount.name} ({mount.source}) could not be given to its "
                    f"user {owner}", details=[f"chown in image {request.image}: {said or _explain(exc)}",
                                              "the service's image needs a chown program for volumes on Docker "
                                              "Engine (Podman needs none)"]) from exc
            self._owned_volumes.add((mount.source, mount.target, owner))

    def _remove_by_name(self, name: str) -> None:
        self.client.containers.get(name).remove(force=True)

    def find(self, instance: InstanceRow, state_dir: str) -> InstanceRow | None:
        """The container created for `instance` (by its `ingot.instance` and `ingot.state` labels), if any."""
        with _engine_errors(f"looking for the container of instance {instance.id} failed"):
            found = containers_labelled(self.client, f"ingot.instance={instance.id}")
        for container in found:
            attrs = container.attrs
            labels = (attrs.get("Config") or {}).get("Labels") or {}
            if labels.get("ingot.state", state_dir) != state_dir:
                continue
            return replace(instance, pid=_main_pid(attrs), port=_any_published_port(attrs),
                           handle=str(container.id), state="starting")
        return None

    def remove_container(self, container_id: str, timeout: float) -> None:
        """Stop and remove a container by ID: for strays that no instance record describes."""
        with _engine_errors(f"removing container {_short_id(container_id)} failed"):
            try:
                container = self.client.containers.get(container_id)
                container.stop(timeout=max(0, math.ceil(timeout)))
                container.remove(v=True)
            except NotFound:
                return

    def stop(self, instance: InstanceRow, timeout: float) -> None:
        """SIGTERM (and SIGCONT, for a stopped one), SIGKILL after `timeout`; returns once the container
        has exited. A paused container is unpaused first: engines signal no paused container.

        The exited container is removed in the background: the engine's clean-up (about 0.3 s on
        Podman) is housekeeping, and a deploy need not wait for it once nothing runs.
        """
        container = self._container(instance)
        if container is None:
            return  # never started, or already removed: either way, stopped
        with _engine_errors(f"instance {instance.id}: stopping container {_short_id(container.id)} failed"):
            try:
                if container.status == "paused":
                    with suppress(DockerException):
                        container.unpause()
                if not _signal_and_wait(container, ("SIGTERM", "SIGCONT"), timeout):
                    _signal_and_wait(container, ("SIGKILL",), 10.0)
            except NotFound:
                return
        _REMOVALS.submit(_remove_quietly, container)

    def observe(self, instance: InstanceRow) -> Observation:
        """Alive iff the container runs. An engine that cannot be asked raises `OperationFailed`:
        not knowing is not dead, and reporting dead would replace instances that still serve."""
        container = self._container(instance)
        if container is None:
            return Observation(alive=False, detail="container is gone")
        state = container.attrs.get("State") or {}
        status = state.get("Status")
        if status == "running":
            return Observation(alive=True)
        if status == "paused":
            # Like a SIGSTOPped process: still there; its health probes say it does not answer.
            return Observation(alive=True, detail="container is paused")
        if status == "created":
            return Observation(alive=False, detail="container was created but never started")
        code = _exit_code(container, state)
        detail = f"exited with code {code}"
        if state.get("OOMKilled"):
            detail += " (killed for running out of memory)"
        return Observation(alive=False, exit_code=code, detail=detail)

    def log_tail(self, instance: InstanceRow, lines: int = 20) -> list[str]:
        """The last `lines` lines the container wrote, stdout and stderr interleaved as written."""
        container = self._container(instance)
        if container is None or lines <= 0:
            return []
        with _engine_errors(f"instance {instance.id}: reading the container's log failed"):
            try:
                return _last_log_lines(container, lines, whole_log=is_podman(self.client))
            except NotFound:
                return []

    def follow_log(self, instance: InstanceRow, tail: int | None = None,
                   stop: threading.Event | None = None) -> Iterator[str]:
        """The container's stdout and stderr lines as it writes them until it exits: from its start (a
        one-off's output shown live), or its last `tail` lines first (`ingot logs --follow`). The stream
        ends with the container, so `stop` is not needed. Blocking: read it in a thread."""
        container = self._container(instance)
        if container is None:
            return
        with _engine_errors(f"instance {instance.id}: following the container's log failed"):
            if tail is None:
                yield from _lines(container.logs(stdout=True, stderr=True, stream=True, follow=True))
            elif not is_podman(self.client):
                yield from _lines(container.logs(stdout=True, stderr=True, stream=True, follow=True, tail=tail))
            else:
                # Podman's `tail` garbles lines (see _last_log_lines): the tail as log_tail reads it, then
                # what comes after. A line written in that moment may show twice.
                since = time.time()
                yield from self.log_tail(instance, tail)
                yield from _lines(container.logs(stdout=True, stderr=True, stream=True, follow=True, since=since))

    def feed_stdin(self, instance: InstanceRow, fd: int) -> None:
        """Copy what can be read from `fd` to the stdin of a container this object started with `stdin`,
        closing it at the end of `fd` (stdin_once: the command sees its end of input). Blocking: run it in
        a thread."""
        attached = self._attached.pop(str(instance.handle), None)
        if attached is None:
            return
        sock = getattr(attached, "_sock", attached)  # the SDK wraps the hijacked socket in a SocketIO
        with _engine_errors(f"instance {instance.id}: writing to the container's stdin failed"):
            try:
                while chunk := os.read(fd, 65536):
                    sock.sendall(chunk)
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            finally:
                attached.close()

    def terminal(self, instance: InstanceRow, in_fd: int, out_fd: int) -> None:
        """Join the TTY of a container started with `terminal` to `in_fd` (what is typed, raw) and `out_fd`
        (what it shows), until the container's side ends. Blocking: run it in a thread."""
        attached = self._attached.pop(str(instance.handle), None)
        if attached is None:
            return
        sock = getattr(attached, "_sock", attached)  # the SDK wraps the hijacked socket in a SocketIO

        def typed() -> None:
            with suppress(OSError):  # the container's side closed: it has ended
                while chunk := os.read(in_fd, 65536):
                    sock.sendall(chunk)

        # A daemon: a caller's terminal read that never returns must not hold this process at exit.
        threading.Thread(target=typed, name=f"tty in {instance.id}", daemon=True).start()
        try:
            with suppress(OSError):
                while data := sock.recv(65536):
                    os.write(out_fd, data)
        finally:
            attached.close()

    def resize(self, instance: InstanceRow, rows: int, columns: int) -> None:
        """Set the window size of the TTY of a container started with `terminal`."""
        container = self._container(instance)
        if container is not None:
            with _engine_errors(f"instance {instance.id}: resizing the container's TTY failed"):
                container.resize(height=rows, width=columns)

    def interrupt(self, instance: InstanceRow) -> None:
        """SIGINT to the container's command (as `docker run`'s signal proxy does)."""
        container = self._container(instance)
        if container is not None:
            with suppress(DockerException):  # it may have exited since
                container.kill(signal="SIGINT")

    # -- drift facts -----------------------------------------------------------------------------

    def facts(self, instance: InstanceRow) -> ContainerFacts | None:
        """What the engine says about the instance's container; None if there is no such container."""
        attrs = self._inspect(instance)
        return None if attrs is None else _facts_of(attrs)

    def changed_files(self, instance: InstanceRow) -> list[tuple[str, str]]:
        """Files changed in the container's writable layer: (path, "added" | "modified" | "deleted").

        Engine noise is left out (see `without_engine_noise`). A container that is gone has none.
        """
        container = self._container(instance)
        if container is None:
            return []
        with _engine_errors(f"instance {instance.id}: reading the container's changes failed"):
            try:
                raw = container.diff() or []
            except NotFound:
                return []
        entries = [(str(item["Path"]), DIFF_KINDS.get(int(item["Kind"]), "modified")) for item in raw]
        return without_engine_noise(entries, _mount_points(container.attrs))

    def labelled(self, project: str) -> list[ContainerFacts]:
        """Every container labelled `ingot.project=<project>`, running or not, whoever started it."""
        with _engine_errors(f"listing the containers of project {project} failed"):
            found = containers_labelled(self.client, f"ingot.project={project}")
        return [_facts_of(container.attrs) for container in found]

    # -- images ----------------------------------------------------------------------------------

    def build_image(
        self,
        context: Path,
        *,
        tag: str,
        build_args: dict[str, str] | None = None,
        on_output: Callable[[str], None] = lambda line: None,
        no_cache: bool = False,
    ) -> str:
        """Build the context's Containerfile (else Dockerfile) with the engine; return the image ID.

        Output lines go to `on_output` as the engine produces them. An unchanged context builds to
        the same image ID, from the engine's build cache. The context sent leaves out the patterns of
        `.containerignore`, else `.dockerignore` (Podman's order), on both engines.
        """
        containerfile = _containerfile(context)
        last: deque[str] = deque(maxlen=BUILD_TAIL_LINES)

        def emit(line: str) -> None:
            last.append(line)
            on_output(line)

        what = f"building the image of {context} ({containerfile})"
        with _engine_errors(f"{what} failed", details=lambda: ["last build output:", *last]), \
                _context_tarball(context, containerfile) as tarball:
            chunks = self.client.api.build(
                fileobj=tarball,
                custom_context=True,
                dockerfile=containerfile,
                tag=tag,
                buildargs=dict(build_args or {}),
                rm=True,
                forcerm=True,  # no intermediate containers left behind by a failed step
                pull=False,  # no registry is reachable; a base image must be local
                nocache=no_cache,  # `ingot build --rebuild`: every step afresh
                decode=True,
            )
            image_id = _follow_build(chunks, emit, what, last)
            if image_id is None:
                # Not every engine reports the ID in an `aux` message; the tag just written says it.
                image_id = str(self.client.images.get(tag).id)
        return image_id

    def tag_image(self, image_id: str, repository: str, tag: str) -> None:
        with _engine_errors(f"tagging image {image_id} as {repository}:{tag} failed"):
            try:
                image = self.client.images.get(image_id)
            except NotFound as exc:
                raise OperationFailed(f"image {image_id} is not in the container engine",
                                      details=[f"engine: {_explain(exc)}"]) from exc
            if not image.tag(repository, tag):
                raise OperationFailed(f"the engine refused to tag image {image_id} as {repository}:{tag}")

    def resolve_image(self, ref: str, allow_mutable_tag: bool = False) -> str:
        """The local image ID that `ref` names.

        `name@sha256:...` is matched against the local images' repository digests, then against
        their IDs (a locally built image has an ID but, never pushed, no repository digest). A bare
        `sha256:...` is an image ID. A tag is refused unless `allow_mutable_tag`; it is then resolved
        once, here, and whoever calls this pins the returned ID.
        """
        _name, at, digest = ref.partition("@")
        if at:
            if not IMAGE_ID.match(digest):
                raise UserInputError(f"image {ref!r}: a digest is `sha256:` and 64 lowercase hex digits")
            return self._local_image_id(ref, fallback=digest)
        if IMAGE_ID.match(ref):
            return self._local_image_id(ref)
        if not allow_mutable_tag:
            raise _mutable_tag_refused(ref)
        return self._local_image_id(ref)

    def image_exists(self, image_id: str) -> bool:
        with _engine_errors(f"looking up image {image_id} failed"):
            try:
                self.client.images.get(image_id)
            except NotFound:
                return False
        return True

    def release_image(self, image_id: str, tags: list[str]) -> str:
        """Drop this project's `tags` of the image, and the image itself once nothing else holds it.

        Identical builds give identical image IDs, so another project may run or keep the same image:
        it stays for them. Returns what happened, in words.
        """
        with _engine_errors(f"releasing image {image_id} failed"):
            try:
                image = self.client.images.get(image_id)
            except NotFound:
                return "already gone"
            wanted = set(tags)
            for tag in image.tags:
                # Podman names an unqualified tag docker.io/...: compare without the registry part.
                if tag in wanted or tag.removeprefix("docker.io/") in wanted:
                    _ignore_not_found(partial(self.client.images.remove, tag))
            image.reload()
            users = self.image_users(str(image.id))
            if image.tags or users:
                held = [*image.tags, *(f"container {u}" for u in users)]
                return f"untagged; the image stays, still held by {', '.join(held)}"
            _ignore_not_found(partial(self.client.images.remove, str(image.id)))
            return "removed"

    def remove_image(self, image_id: str) -> None:
        """Remove the image and its tags, never by force: `ImageInUse` while any container uses it.

        Gone already is fine. The check gives the message; the engine, asked without force, is what
        guarantees it (a container created meanwhile makes the engine refuse: `OperationFailed`).
        """
        with _engine_errors(f"removing image {image_id} failed"):
            try:
                image = self.client.images.get(image_id)
            except NotFound:
                return
            users = self.image_users(str(image.id))
            if users:
                raise ImageInUse(image_id, users)
            # Untag first: removing by ID an image that has several tags needs force on both engines.
            for name in [*image.tags, str(image.id)]:
                _ignore_not_found(partial(self.client.images.remove, name))

    # -- helpers ---------------------------------------------------------------------------------

    def _container(self, instance: InstanceRow) -> Any | None:
        if not instance.handle:
            return None
        with _engine_errors(f"instance {instance.id}: looking up container {_short_id(instance.handle)} failed"):
            try:
                return self.client.containers.get(instance.handle)
            except NotFound:
                return None
            except APIError as exc:
                # Podman answers 500 "no such container" for one it is removing (after `stop`): gone.
                if "no such container" in _explain(exc).lower():
                    return None
                raise

    def _inspect(self, instance: InstanceRow) -> dict[str, Any] | None:
        container = self._container(instance)
        return None if container is None else dict(container.attrs)

    def local_image_id(self, ref: str) -> str | None:
        """The ID of the local image `ref` names, or None if the engine has no such image."""
        with _engine_errors(f"looking up image {ref} failed"):
            try:
                return str(self.client.images.get(ref).id)
            except NotFound:
                return None

    def _local_image_id(self, ref: str, fallback: str | None = None) -> str:
        with _engine_errors(f"looking up image {ref} failed"):
            for candidate in (ref, fallback):
                if candidate is None:
                    continue
                try:
                    return str(self.client.images.get(candidate).id)
                except NotFound:
                    continue
        raise OperationFailed(f"image {ref} is not in the container engine", details=list(_LOAD_HINT))

    def image_users(self, image_id: str) -> list[str]:
        """Names of the containers, running or not, of any project or none, created from the image."""
        found = []
        with _engine_errors(f"listing the containers of image {image_id} failed"):
            summaries = self.client.api.containers(all=True)
        wanted = image_id.removeprefix("sha256:")
        for summary in summaries:
            if str(summary.get("ImageID") or "").removeprefix("sha256:") == wanted:
                names = summary.get("Names") or [summary.get("Id", "?")]
                found.append(str(names[0]).lstrip("/"))
        return found


# -- pure helpers --------------------------------------------------------------------------------

_LOAD_HINT = (
    "no registry is reachable from here, so an image must already be in the engine:",
    "  load it (podman load -i FILE, docker load -i FILE) or build it from the service's `build:` context",
)


def instance_env(request: InstanceRequest) -> dict[str, str]:
    """The release's env, then ingot's own variables, which win over a release's same-named ones."""
    env = dict(request.env)
    env.update(
        {
            **({"PORT": str(request.container_port)} if request.container_port is not None else {}),
            **volumes.variables(request.volumes, "docker"),
            "INGOT_RELEASE": request.release_id,
            "INGOT_SERVICE": request.service,
            "INGOT_ENVIRONMENT": request.environment,
            "INGOT_INSTANCE": request.instance_id,
            **({"INGOT_PROJECT": request.project} if request.project else {}),
        }
    )
    return env


def instance_labels(request: InstanceRequest) -> dict[str, str]:
    return {
        "ingot.project": request.project,
        "ingot.environment": request.environment,
        "ingot.service": request.service,
        "ingot.release": request.release_id,
        "ingot.instance": request.instance_id,
        **({"ingot.state": request.state_dir} if request.state_dir else {}),
        # A one-off instance (ingot.oneoff) carries no state label either: drift and self-heal leave it alone.
        **({"ingot.oneoff": "1"} if request.oneoff else {}),
    }


def _create_arguments(request: InstanceRequest, name: str, user: str | None = None,
                      podman: bool = False) -> dict[str, Any]:
    hardening = request.hardening
    env = instance_env(request)
    # A fresh engine volume is root's: Podman's U option gives it to the container's user (on Docker Engine,
    # DockerRuntime._own_volumes has done it before).
    mode = "rw,U" if podman else "rw"
    resources = request.resources
    limits = {"mem_limit": resources.memory_bytes, "nano_cpus": resources.nano_cpus,
              "cpu_shares": resources.cpu_shares, "mem_reservation": resources.memory_reservation_bytes}
    return {
        "image": request.image,
        "command": expand_own(request.command, env) or None,
        "name": name,
        "detach": True,
        "environment": env,
        "labels": instance_labels(request),
        # Host port None: the engine picks a free one, read back after start. No race with other
        # processes, unlike picking a free port first and binding it later. A worker publishes none.
        **({"ports": {f"{request.container_port}/tcp": (LOCALHOST, None)}} if request.container_port is not None
           else {}),
        **({"volumes": {m.source: {"bind": m.target, "mode": mode} for m in request.volumes}}
           if request.volumes else {}),
        "read_only": hardening.read_only,
        "tmpfs": {path: TMPFS_OPTIONS for path in hardening.tmpfs} or None,
        "security_opt": ["no-new-privileges"] if hardening.no_new_privileges else None,
        "cap_drop": ["ALL"] if hardening.drop_all_capabilities else None,
        "cap_add": list(hardening.add_capabilities) or None,
        "restart_policy": {"Name": "no"},
        # Capped like a process instance's log (an engine's default keeps everything, until the disk fills).
        "log_config": LogConfig(type="json-file", config={"max-size": str(log_max_bytes()),
                                                          "max-file": str(LOG_BACKUPS + 1)}),
        **({"user": user} if user is not None else {}),
        # Not detached: the SDK then sets StdinOnce, so the command's stdin ends when the attached one does.
        **({"stdin_open": True, "detach": False} if request.stdin or request.terminal else {}),
        **({"tty": True} if request.terminal else {}),
        **{key: value for key, value in limits.items() if value is not None},
    }


def _fail_if_exited(container: Any, what: str) -> None:
    """An instance that died before its port could be read: say how, with its last log lines.

    The engine unpublishes the ports of a stopped container, so there is no instance to return; the
    log is read now because the container is removed right after.
    """
    state = container.attrs.get("State") or {}
    if state.get("Status") == "running":
        return
    code = _exit_code(container, state)
    lines = _last_log_lines(container, 15, whole_log=is_podman(container.client))
    raise OperationFailed(f"{what} exited at once with code {code}",
                          details=["last log lines:", *[f"  | {line}" for line in lines]])


def _exit_code(container: Any, state: dict[str, Any]) -> int:
    """The exit code of a container that no longer runs. Podman may answer an inspect between "running"
    and "exited" before it has read the code (ExitCode 0 or unset): the engine's wait gives it once
    known, at once for a container that has exited."""
    code = state.get("ExitCode")
    with suppress(Exception):  # gone meanwhile (removed after a stop): what the inspect said
        code = container.wait(timeout=10).get("StatusCode", code)
    return int(code or 0)


def _last_log_lines(container: Any, lines: int, *, whole_log: bool) -> list[str]:
    """The last `lines` lines of the container's stdout and stderr, as written.

    Podman before 4.7 garbles `tail` when a program writes a line in several writes (Python's
    unbuffered print() writes the text, then the newline): lines come back joined or empty
    (podman#19545, fixed by podman#19562; Debian 12 ships 4.3). Its untailed log is right, so on Podman
    the whole log is streamed through a bounded buffer: correct, at a cost that grows with the log.
    """
    if not whole_log:
        raw = container.logs(stdout=True, stderr=True, tail=lines)
        return bytes(raw).decode("utf-8", "replace").splitlines()[-lines:]
    kept: deque[str] = deque(_lines(container.logs(stdout=True, stderr=True, stream=True, follow=False)),
                             maxlen=lines)
    return list(kept)


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Whole lines from a log stream's chunks, as each one completes."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a chunk may end mid-character too
    pending = ""
    for chunk in chunks:
        # A chunk may end mid-line (that is what a partial write is): keep the rest for the next one.
        pending += decoder.decode(bytes(chunk))
        *complete, pending = pending.split("\n")
        yield from complete
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def _published_port(attrs: dict[str, Any], container_port: int) -> int:
    bindings = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{container_port}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") in (LOCALHOST, "") and binding.get("HostPort"):
            return int(binding["HostPort"])
    raise OperationFailed(f"the engine did not publish container port {container_port}/tcp on {LOCALHOST}",
                          details=[f"published: {bindings!r}"])


def _any_published_port(attrs: dict[str, Any]) -> int:
    """The host port published on 127.0.0.1, whatever the container port; 0 when none (not started)."""
    for bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).values():
        for binding in bindings or []:
            if binding.get("HostIp") in (LOCALHOST, "") and binding.get("HostPort"):
                return int(binding["HostPort"])
    return 0


def _main_pid(attrs: dict[str, Any]) -> int | None:
    pid = int((attrs.get("State") or {}).get("Pid") or 0)
    return pid or None


def _facts_of(attrs: dict[str, Any]) -> ContainerFacts:
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    running = state.get("Status") == "running"
    return ContainerFacts(
        container_id=str(attrs["Id"]),
        image_id=str(attrs.get("Image") or ""),
        env=_parse_env(config.get("Env") or []),
        labels={str(k): str(v) for k, v in (config.get("Labels") or {}).items()},
        running=running,
        exit_code=None if running else int(state.get("ExitCode") or 0),
        name=str(attrs.get("Name") or "").lstrip("/"),
    )


def _parse_env(pairs: Iterable[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, _, value = str(pair).partition("=")
        env[key] = value
    return env


def _mount_points(attrs: dict[str, Any]) -> list[str]:
    """Where something is mounted over the root filesystem: tmpfs, volumes, bind mounts."""
    tmpfs = list(((attrs.get("HostConfig") or {}).get("Tmpfs") or {}).keys())
    mounts = [str(m.get("Destination")) for m in attrs.get("Mounts") or [] if m.get("Destination")]
    return [*tmpfs, *mounts]


def _is_at_or_under(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def without_engine_noise(entries: list[tuple[str, str]], mount_points: Iterable[str]) -> list[tuple[str, str]]:
    """The container's changed files minus what is not the instance's doing.

    Left out:
    - paths at or under a mount point (tmpfs such as /tmp, volumes): those are not the container's
      layer, and the engine creates the mount point directory itself when the image lacks it;
    - the files the engine writes into every container (ENGINE_WRITTEN, e.g. /run/.containerenv
      on Podman, /etc/hosts and /etc/resolv.conf);
    - a directory reported "modified" only because the engine created one of those mount points or
      files inside it (Podman reports /etc so in every container), i.e. an ancestor of them with no
      remaining change beneath it. A directory above a change that is kept stays, as engines report it.
    """
    noise_roots = [*ENGINE_WRITTEN, *mount_points]
    kept = [(path, kind) for path, kind in entries if not _is_at_or_under(path, noise_roots)]

    def above_engine_work(path: str, kind: str) -> bool:
        return kind == "modified" and any(_is_at_or_under(root, [path]) for root in noise_roots)

    # Judged against the changes that are the instance's own, not against each other: with a volume at
    # /var/lib/queue, Podman reports both /var and /var/lib modified, and neither is the instance's doing.
    own = [path for path, kind in kept if not above_engine_work(path, kind)]
    return [(path, kind) for path, kind in kept
            if not above_engine_work(path, kind) or any(_is_at_or_under(other, [path]) for other in own)]


def _containerfile(context: Path) -> str:
    if not context.is_dir():
        raise UserInputError(f"{context}: the build context is not a directory")
    for name in CONTAINERFILES:
        if (context / name).is_file():
            return name
    raise UserInputError(
        f"{context}: no Containerfile or Dockerfile in this build context",
        details=["the docker runtime builds a service's image from Containerfile (or else Dockerfile) in its "
                 "`build:` directory: add one, or give `image: name@sha256:...` instead of `build:`"],
    )


def _ignore_patterns(context: Path) -> list[str]:
    for name in IGNORE_FILES:
        path = context / name
        if path.is_file():
            lines = (line.strip() for line in path.read_text().splitlines())
            return [line for line in lines if line and not line.startswith("#")]
    return []


@contextmanager
def _context_tarball(context: Path, containerfile: str) -> Iterator[IO[bytes]]:
    """The build context as a tar file, made here rather than by the SDK: the SDK only knows
    `.dockerignore`, and Docker Engine does not read `.containerignore`."""
    tarball = context_tar(str(context), exclude=_ignore_patterns(context), dockerfile=(containerfile, None))
    try:
        yield tarball
    finally:
        tarball.close()


def _follow_build(chunks: Iterator[dict[str, Any]], emit: Callable[[str], None], what: str,
                  last: deque[str]) -> str | None:
    """Pass the build's output on line by line; return the image ID if the engine reported it."""
    image_id: str | None = None
    pending = ""
    for chunk in chunks:
        if "stream" in chunk:
            # A chunk may hold part of a line or several lines: emit whole lines only.
            pending += str(chunk["stream"])
            *lines, pending = pending.split("\n")
            for line in lines:
                emit(line.rstrip("\r"))
        elif "error" in chunk:
            if pending:
                emit(pending)
            raise OperationFailed(f"{what} failed: {str(chunk['error']).strip()}",
                                  details=["last build output:", *last])
        elif isinstance(chunk.get("aux"), dict) and "ID" in chunk["aux"]:
            image_id = str(chunk["aux"]["ID"])
    if pending:
        emit(pending)
    return image_id


def _mutable_tag_refused(ref: str) -> UserInputError:
    repository = ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref
    return UserInputError(
        f"image {ref!r} is a mutable tag: ingot pins images by digest",
        details=[
            "a tag can be moved to other content at any time, so a release made from it would not say what "
            "runs, and restarting the same release could run different code",
            f"pin it: image: {repository}@sha256:<digest>  (see `podman images --digests {repository}` or "
            f"`docker images --digests {repository}`; a local image's ID, sha256:..., pins it too)",
            "or accept the risk: set `allow_mutable_tag: true` on the service and give the reason; the tag is "
            "then resolved to an image ID once, and the release pins that ID",
        ],
    )


def _explain(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _short_id(container_id: str) -> str:
    return str(container_id).removeprefix("sha256:")[:12]


def _ignore_not_found(action: Callable[[], object]) -> None:
    with suppress(NotFound):
        action()


# Not daemon threads: a CLI process that stopped containers waits for their removal before it exits.
_REMOVALS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ingot-container-removal")
_EXITED_POLL = 0.02


def _signal_and_wait(container: Any, signals: tuple[str, ...], timeout: float) -> bool:
    """Send `signals`; True once the container no longer runs, False if it still runs after `timeout`."""
    for signal in signals:
        with suppress(DockerException):  # it may have exited between the look-up and the signal
            container.kill(signal=signal)
    deadline = time.monotonic() + timeout
    while True:
        try:
            container.reload()
        except NotFound:
            return True
        except APIError:
            # Podman's inspect races the exit it reports ("read /proc/N/cgroup: no such process"):
            # the container is on its way out, so ask again rather than fail the stop.
            if time.monotonic() >= deadline:
                raise
            time.sleep(_EXITED_POLL)
            continue
        if container.status not in ("running", "stopping", "paused"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_EXITED_POLL)


def _remove_quietly(container: Any) -> None:
    # The original error is the one worth reporting, not a failure to clean up after it.
    with suppress(DockerException, OSError):
        container.remove(force=True, v=True)


@contextmanager
def _engine_errors(what: str, details: Callable[[], list[str]] | None = None) -> Iterator[None]:
    """Turn the engine's errors (API errors, a connection lost mid-call) into an `OperationFailed`.

    requests' connection errors are OSErrors, so `OSError` covers an engine that went away.
    """
    try:
        yield
    except (DockerException, OSError) as exc:
        raise OperationFailed(f"{what}: {_explain(exc)}", details=details() if details else []) from exc
