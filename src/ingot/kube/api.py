"""The few things ingot asks of a cluster, behind one small interface.

`KubeApi` is what rollouts, drift and repair use; `ClusterApi` implements it with the official Python
client (server-side apply, field manager `ingot`). Tests use an in-memory fake with the same methods.
Every object lives in the target's namespace.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from ingot.errors import OperationFailed, UserInputError
from ingot.kube.names import MANAGER

API_VERSIONS = {
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "Pod": "v1",
    "Event": "v1",
    "Namespace": "v1",
    "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
}


class KubeApi(Protocol):
    namespace: str
    where: str  # "context C, namespace N", for messages

    def serves(self, kind: str) -> bool:
        """Whether the cluster serves this kind (HTTPRoute needs the Gateway API installed)."""

    def ensure_namespace(self, labels: Mapping[str, str]) -> None: ...

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply, field manager `ingot`, taking over conflicting fields (ingot is the authority)."""

    def get(self, kind: str, name: str) -> dict[str, Any] | None: ...

    def find(self, kind: str, selector: str) -> list[dict[str, Any]]: ...

    def delete(self, kind: str, name: str) -> None:
        """Delete it, and what it owns (a Job's pods) in the background; gone already is fine."""

    def scale(self, name: str, replicas: int) -> None:
        """Set a Deployment's replicas alone (its pod template is never re-sent to scale it)."""

    def patch_json(self, kind: str, name: str, operations: list[dict[str, Any]]) -> None:
        """A JSON patch: how fields other clients added are removed (apply never removes others' fields)."""

    def events(self, kind: str, name: str) -> list[dict[str, Any]]: ...

    def log_tail(self, pod: str, container: str, lines: int, previous: bool = False) -> list[str]: ...

    def pod_log(self, pod: str, container: str) -> list[str] | None:
        """The container's whole log so far; None while there is none to read (the pod is not running yet)."""


def _explain(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):  # urllib3's MaxRetryError: the connection error under it says more
        exc = reason
    body = getattr(exc, "body", None)
    if body:
        try:
            import json

            parsed = json.loads(body)
            if isinstance(parsed, dict) and parsed.get("message"):
                return str(parsed["message"])
        except ValueError:
            pass
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status:
        return f"{status} {reason or ''}".strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class ClusterApi:
    """`KubeApi` over the official client. Kubeconfig from $KUBECONFIG or ~/.kube/config, else in-cluster."""

    def __init__(self, context: str | None, namespace: str) -> None:
        self.namespace = namespace
        self.context = context
        self.where = f"context {context or '(current)'}, namespace {namespace}"
        self._client = _connect(context)
        from kubernetes import dynamic

        with self._calls("reading what the cluster serves"):
            self._dynamic: Any = dynamic.DynamicClient(self._client)  # asks the server at once (discovery)
        self._resources: dict[str, Any] = {}

    # -- plumbing --------------------------------------------------------------------------------

    @contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except ApiException as exc:
            raise OperationFailed(f"{what} ({self.where}): {_explain(exc)}") from exc
        except (HTTPError, OSError) as exc:
            host = getattr(getattr(self._client, "configuration", None), "host", "?")
            raise OperationFailed(f"{what}: cannot reach the cluster's API server at {host}: {_explain(exc)}") from exc

    def _resource(self, kind: str) -> Any:
        if kind not in self._resources:
            from kubernetes.dynamic.exceptions import ResourceNotFoundError

            with self._calls(f"looking up the {kind} API"):
                try:
                    self._resources[kind] = self._dynamic.resources.get(api_version=API_VERSIONS[kind], kind=kind)
                except ResourceNotFoundError:
                    raise OperationFailed(f"the cluster ({self.where}) does not serve {API_VERSIONS[kind]} {kind}") \
                        from None
        return self._resources[kind]

    # -- KubeApi ---------------------------------------------------------------------------------

    def serves(self, kind: str) -> bool:
        try:
            self._resource(kind)
        except OperationFailed:
            return False
        return True

    def ensure_namespace(self, labels: Mapping[str, str]) -> None:
        try:
            if self.get_cluster("Namespace", self.namespace) is not None:
                return
        except OperationFailed:
            return  # not allowed to read namespaces: someone made it for us; a missing one shows up next call
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace, "labels": dict(labels)}}
        with self._calls(f"creating namespace {self.namespace}"):
            self._dynamic.server_side_apply(self._resource("Namespace"), body=body, name=self.namespace,
                                            field_manager=MANAGER, force_conflicts=True)

    def get_cluster(self, kind: str, name: str) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        with self._calls(f"reading {kind} {name}"):
            try:
                return dict(self._dynamic.get(self._resource(kind), name=name).to_dict())
            except NotFoundError:
                return None

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind, name = str(obj["kind"]), str(obj["metadata"]["name"])
        with self._calls(f"applying {kind} {name}"):
            result = self._dynamic.server_side_apply(self._resource(kind), body=dict(obj), name=name,
                                                     namespace=self.namespace, field_manager=MANAGER,
                                                     force_conflicts=True)
        return dict(result.to_dict())

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        with self._calls(f"reading {kind} {name}"):
            try:
                return dict(self._dynamic.get(self._resource(kind), name=name, namespace=self.namespace).to_dict())
            except NotFoundError:
                return None

    def find(self, kind: str, selector: str) -> list[dict[str, Any]]:
        with self._calls(f"listing {kind} objects"):
            found = self._dynamic.get(self._resource(kind), namespace=self.namespace, label_selector=selector)
        return [dict(item) for item in found.to_dict().get("items") or []]

    def delete(self, kind: str, name: str) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError

        with self._calls(f"deleting {kind} {name}"):
            try:
                # Background: a Job's pods go with it (the API's default for Jobs orphans them).
                self._dynamic.delete(self._resource(kind), name=name, namespace=self.namespace,
                                     propagation_policy="Background")
            except NotFoundError:
                return

    def scale(self, name: str, replicas: int) -> None:
        with self._calls(f"scaling Deployment {name} to {replicas}"):
            self._dynamic.patch(self._resource("Deployment"), body={"spec": {"replicas": replicas}}, name=name,
                                namespace=self.namespace, content_type="application/merge-patch+json",
                                field_manager=MANAGER)

    def patch_json(self, kind: str, name: str, operations: list[dict[str, Any]]) -> None:
        with self._calls(f"removing fields from {kind} {name}"):
            self._dynamic.patch(self._resource(kind), body=operations, name=name, namespace=self.namespace,
                                content_type="application/json-patch+json", field_manager=MANAGER)

    def events(self, kind: str, name: str) -> list[dict[str, Any]]:
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        with self._calls(f"reading the events of {kind} {name}"):
            found = self._dynamic.get(self._resource("Event"), namespace=self.namespace, field_selector=selector)
        return [dict(item) for item in found.to_dict().get("items") or []]

    def log_tail(self, pod: str, container: str, lines: int, previous: bool = False) -> list[str]:
        from kubernetes import client

        try:
            with self._calls(f"reading the log of pod {pod}"):
                text = client.CoreV1Api(self._client).read_namespaced_pod_log(
                    pod, self.namespace, container=container, tail_lines=lines, previous=previous)
        except OperationFailed as exc:
            return [f"(no log: {exc.message})"]
        return str(text or "").splitlines()[-lines:]

    def pod_log(self, pod: str, container: str) -> list[str] | None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        with self._calls(f"reading the log of pod {pod}"):
            try:
                text = client.CoreV1Api(self._client).read_namespaced_pod_log(pod, self.namespace,
                                                                              container=container)
            except ApiException as exc:
                if exc.status in (400, 404):  # "waiting to start", or the pod is gone: nothing to read now
                    return None
                raise
        return str(text or "").splitlines()


def _connect(context: str | None) -> Any:
    """An API client from the kubeconfig ($KUBECONFIG, else ~/.kube/config), else the in-cluster config."""
    from kubernetes import client, config

    # Read now, not at import: the client's own default is $KUBECONFIG as it was when it was imported.
    config_file = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        return config.new_client_from_config(config_file=config_file, context=context)
    except config.ConfigException as exc:
        in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ
        if context is None and in_cluster:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise UserInputError(f"cannot use the kubeconfig at {where}" + (f" (context {context})" if context else "")
                             + f": {exc}",
                             details=["point KUBECONFIG at a kubeconfig file, or run inside a cluster"]) from None


ApiFactory = Callable[[str | None, str], KubeApi]


def connect(context: str | None, namespace: str) -> KubeApi:
    """The default way to reach a target's cluster; tests replace it (see `ingot.kube.operations`)."""
    return ClusterApi(context, namespace)
