"""An in-memory cluster with the `KubeApi` methods: enough API server and Deployment controller to run
rollouts, drift and repair without a cluster.

Objects come back as `server.server_view` makes them (defaults, identity, status, managedFields). A
Deployment whose image is listed in `crashing` never becomes Available: its pods crash, with events and
log lines, as the kubelet would report them. A Job runs its pod to its end at once: its command's exit
code and log lines are `job_results[" ".join(args)]` (default: 0 and one line), and every Job started is
in `jobs_started`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ingot.errors import OperationFailed
from tests.kube import server


def _matches(labels: Mapping[str, str], selector: str) -> bool:
    for part in filter(None, selector.split(",")):
        key, _, value = part.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _merge(old: Any, new: Any) -> Any:
    """Server-side apply's effect as far as these tests need it: ingot's values win, fields that only the
    live object has (set by other managers) stay."""
    if isinstance(old, dict) and isinstance(new, dict):
        merged = dict(old)
        for key, value in new.items():
            merged[key] = _merge(old.get(key), value)
        return merged
    if isinstance(old, list) and isinstance(new, list) and new and all(isinstance(i, dict) for i in [*old, *new]):
        key = next((k for k in ("name", "mountPath") if all(k in i for i in [*old, *new])), None)
        if key is None:
            return new
        by_key = {i[key]: i for i in old}
        merged_items = [_merge(by_key.get(i[key]), i) for i in new]
        kept = [i for i in old if i[key] not in {n[key] for n in new}]
        return merged_items + kept
    return copy.deepcopy(new)


class FakeCluster:
    def __init__(self, namespace: str = "hello-prod", *, gateway_api: bool = False) -> None:
        self.namespace = namespace
        self.where = f"fake cluster, namespace {namespace}"
        self.gateway_api = gateway_api
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.crashing: set[str] = set()  # images whose containers exit at once
        self.namespaces: dict[str, dict[str, str]] = {}
        self.calls: list[tuple[str, str, str]] = []  # (verb, kind, name), for assertions on what was done
        self.job_results: dict[str, tuple[int, list[str]]] = {}  # a Job's command -> (exit code, log lines)
        self.jobs_started: list[str] = []  # the Jobs applied anew, in order (a Job's command ran once each)
        self._version = 100

    # ---- KubeApi ---------------------------------------------------------------------------------

    def serves(self, kind: str) -> bool:
        return kind != "HTTPRoute" or self.gateway_api

    def ensure_namespace(self, labels: Mapping[str, str]) -> None:
        self.namespaces.setdefault(self.namespace, dict(labels))

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind, name = str(obj["kind"]), str(obj["metadata"]["name"])
        if not self.serves(kind):
            raise OperationFailed(f"the cluster does not serve {kind}")
        self.calls.append(("apply", kind, name))
        old = self.objects.get((kind, name))
        if old is not None and old.get("immutable") and kind in ("ConfigMap", "Secret") \
                and old.get("data") != obj.get("data"):
            raise OperationFailed(f"applying {kind} {name}: field is immutable when `immutable` is set")
        if kind == "Job" and old is None:
            self.jobs_started.append(name)
        generation = int((old or {}).get("metadata", {}).get("generation", 0))
        if old is None or old.get("spec") != _merge(old.get("spec"), obj.get("spec")):
            generation += 1
        self._version += 1
        view = server.server_view(dict(obj), generation=max(1, generation), resource_version=str(self._version))
        if old is not None:
            foreign = [e for e in old["metadata"]["managedFields"] if e["manager"] not in ("ingot",)
                       and e.get("subresource") != "status" and e["manager"] != "kube-controller-manager"]
            merged = _merge(_strip(old), _strip(view))
            merged["metadata"]["managedFields"] = [*view["metadata"]["managedFields"], *foreign]
            merged["metadata"]["uid"] = old["metadata"]["uid"]
            view = merged
        self.objects[(kind, name)] = view
        return copy.deepcopy(self._observe(view))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, name))
        return copy.deepcopy(self._observe(found)) if found is not None else None

    def find(self, kind: str, selector: str) -> list[dict[str, Any]]:
        if kind == "Pod":
            pods = [pod for dep in self._deployments() for pod in self._pods(dep)]
            pods += [self._job_pod(job) for (k, _), job in sorted(self.objects.items()) if k == "Job"]
            return [pod for pod in pods if _matches(pod["metadata"]["labels"], selector)]
        return [copy.deepcopy(self._observe(obj)) for (k, _), obj in sorted(self.objects.items())
                if k == kind and _matches(obj["metadata"].get("labels") or {}, selector)]

    def delete(self, kind: str, name: str) -> None:
        self.calls.append(("delete", kind, name))
        self.objects.pop((kind, name), None)

    def scale(self, name: str, replicas: int) -> None:
        self.calls.append(("scale", "Deployment", name))
        obj = self.objects[("Deployment", name)]
        obj["spec"]["replicas"] = replicas
        obj["metadata"]["generation"] += 1

    def patch_json(self, kind: str, name: str, operations: list[dict[str, Any]]) -> None:
        self.calls.append(("patch", kind, name))
        obj = self.objects[(kind, name)]
        for op in operations:
            assert op["op"] == "remove"
            parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
            node: Any = obj
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node[part]
            last = parts[-1]
            del node[int(last) if isinstance(node, list) else last]
        # The server drops the fields' ownership with them; these tests have one foreign entry at most.
        obj["metadata"]["managedFields"] = [e for e in obj["metadata"]["managedFields"]
                                            if e["manager"] in ("ingot", "kube-controller-manager")
                                            or e.get("subresource") == "status"]

    def events(self, kind: str, name: str) -> list[dict[str, Any]]:
        for dep in self._deployments():
            for pod in self._pods(dep):
                if pod["metadata"]["name"] == name and not server_ready(pod):
                    return [
                        {"type": "Normal", "reason": "Pulled", "message": "Container image already present",
                         "lastTimestamp": "2026-11-22T10:00:01Z"},
                        {"type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container",
                         "lastTimestamp": "2026-11-22T10:00:05Z"},
                    ]
        return []

    def log_tail(self, pod: str, container: str, lines: int, previous: bool = False) -> list[str]:
        return ["Traceback (most recent call last):", "RuntimeError: the database is not there"][-lines:]

    def pod_log(self, pod: str, container: str) -> list[str] | None:
        for (kind, _), job in self.objects.items():
            if kind == "Job" and self._job_pod(job)["metadata"]["name"] == pod:
                return list(self._job_result(job)[1])
        return self.log_tail(pod, container, 100)

    # ---- the controller's side -------------------------------------------------------------------

    def _deployments(self) -> list[dict[str, Any]]:
        return [obj for (kind, _), obj in sorted(self.objects.items()) if kind == "Deployment"]

    def _crashes(self, dep: Mapping[str, Any]) -> bool:
        return any(c["image"] in self.crashing for c in dep["spec"]["template"]["spec"]["containers"])

    def _job_result(self, job: Mapping[str, Any]) -> tuple[int, list[str]]:
        args = job["spec"]["template"]["spec"]["containers"][0].get("args") or []
        command = " ".join(args)
        return self.job_results.get(command, (0, [f"ran: {command}"]))

    def _job_pod(self, job: Mapping[str, Any]) -> dict[str, Any]:
        code, _lines = self._job_result(job)
        container = job["spec"]["template"]["spec"]["containers"][0]
        return {"metadata": {"name": f"{job['metadata']['name']}-x7k2p", "creationTimestamp": server.TIMESTAMP,
                             "labels": dict(job["spec"]["template"]["metadata"]["labels"])},
                "status": {"phase": "Succeeded" if code == 0 else "Failed",
                           "conditions": [{"type": "Ready", "status": "False"}],
                           "containerStatuses": [{"name": container["name"], "ready": False, "restartCount": 0,
                                                  "state": {"terminated": {"exitCode": code, "reason": "Completed"
                                                                           if code == 0 else "Error"}}}]}}

    def _observe(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A Deployment's (or a Job's) status as the controller would have made it by now."""
        if obj["kind"] == "Job":
            code, _lines = self._job_result(obj)
            condition = {"type": "Complete", "status": "True"} if code == 0 else \
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit"}
            obj["status"] = {"conditions": [condition], **({"succeeded": 1} if code == 0 else {"failed": 1})}
            return obj
        if obj["kind"] != "Deployment":
            return obj
        replicas = int(obj["spec"].get("replicas", 1))
        obj["status"] = server._deployment_status(replicas, obj["metadata"]["generation"], not self._crashes(obj))
        return obj

    def _pods(self, dep: Mapping[str, Any]) -> list[dict[str, Any]]:
        name = dep["metadata"]["name"]
        crashing = self._crashes(dep)
        pods = []
        for index in range(int(dep["spec"].get("replicas", 1))):
            state = ({"waiting": {"reason": "CrashLoopBackOff",
                                  "message": "back-off 10s restarting failed container"}} if crashing
                     else {"running": {"startedAt": server.TIMESTAMP}})
            pods.append({
                "metadata": {"name": f"{name}-7d9c5b-{index:05d}", "labels": dict(dep["spec"]["template"]["metadata"]
                                                                                 ["labels"])},
                "status": {"phase": "Running",
                           "conditions": [{"type": "Ready", "status": "False" if crashing else "True"}],
                           "containerStatuses": [{"name": c["name"], "ready": not crashing,
                                                  "restartCount": 3 if crashing else 0, "state": state}
                                                 for c in dep["spec"]["template"]["spec"]["containers"]]},
            })
        return pods

    # ---- for tests -------------------------------------------------------------------------------

    def deployment_names(self) -> list[str]:
        return [obj["metadata"]["name"] for obj in self._deployments()]

    def replicas(self) -> dict[str, int]:
        return {obj["metadata"]["name"]: int(obj["spec"]["replicas"]) for obj in self._deployments()}

    def selects(self, service: str) -> str | None:
        obj = self.objects.get(("Service", service))
        return None if obj is None else obj["spec"]["selector"].get("ingot.dev/deployment", "*")


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"].pop("managedFields", None)
    return out


def server_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod["status"]["conditions"])
