"""Objects as a Kubernetes API server (1.30) returns them after a server-side apply by ingot.

The server adds what ingot never wrote: identity (uid, resourceVersion, generation, creationTimestamp),
defaults (a Deployment's strategy, a container's terminationMessagePath, a probe's scheme, a Service's
clusterIP and ip families...), normalised quantities ("0.5" CPU comes back as "500m"), status, and
managedFields recording which manager owns which field (fieldsV1). These are the fields that make naive
comparisons report false drift; drift tests and the fake cluster both use these answers.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

from ingot.spec.quantities import quantity_value

TIMESTAMP = "2026-11-22T10:00:00Z"
# Keyed lists of the core types ingot renders and the keys the server merges them by; every other list
# is atomic (one value): args, capability names, and every list of a CRD without x-kubernetes-list-type.
LIST_KEYS = {
    "containers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "ports": ("containerPort", "protocol"),
}
SERVICE_PORT_KEYS = ("port", "protocol")
CRD_KINDS = ("HTTPRoute",)


def fields_v1(obj: Any, kind: str, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """The managedFields `fieldsV1` of everything in `obj`, as the server encodes ownership."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if path == () and key in ("apiVersion", "kind"):
            continue
        if path == ("metadata",) and key in ("name", "namespace"):
            continue
        if isinstance(value, dict):
            out[f"f:{key}"] = fields_v1(value, kind, (*path, key)) if value else {}
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value) \
                and kind not in CRD_KINDS and _keys(kind, key, path):
            keys = _keys(kind, key, path)
            items = {}
            for item in value:
                selector = json.dumps({k: item[k] for k in keys if k in item}, separators=(",", ":"),
                                      sort_keys=True)
                items[f"k:{selector}"] = {".": {}, **fields_v1(item, kind, (*path, key, "[]"))}
            out[f"f:{key}"] = items
        else:
            out[f"f:{key}"] = {}
    return out


def _keys(kind: str, key: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
    if kind == "Service" and key == "ports":
        return SERVICE_PORT_KEYS
    return LIST_KEYS.get(key)


def managed(manager: str, operation: str, fields: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
    entry = {"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": fields, "manager": manager,
             "operation": operation, "time": TIMESTAMP}
    if subresource:
        entry["subresource"] = subresource
    return entry


def _cpu(text: Any) -> Any:
    value = quantity_value(str(text))
    if value == value.to_integral_value():
        return str(int(value))
    return f"{int(value * 1000)}m" if (value * 1000) == (value * 1000).to_integral_value() else str(text)


def _normalise_quantities(resources: dict[str, Any]) -> None:
    for bucket in resources.values():
        for name, amount in list(bucket.items()):
            if name == "cpu":
                bucket[name] = _cpu(amount)
            elif isinstance(amount, int | float | Decimal):
                bucket[name] = str(amount)


def server_view(applied: dict[str, Any], *, uid: str = "0b6c7c1e-4c1f-4bb4-9a43-3c0f2f1b0a01",
                resource_version: str = "4711", generation: int = 1, cluster_ip: str = "10.96.112.7",
                ready: bool = True) -> dict[str, Any]:
    """`applied` (what ingot sent) as the server answers it: defaults, identity, status, managedFields."""
    obj = copy.deepcopy(applied)
    kind = obj["kind"]
    meta = obj["metadata"]
    meta.update({"uid": uid, "resourceVersion": resource_version, "creationTimestamp": TIMESTAMP})
    entries = [managed("ingot", "Apply", fields_v1(applied, kind))]
    if kind == "Deployment":
        meta["generation"] = generation
        meta.setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "1"
        spec = obj["spec"]
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        spec["template"]["metadata"]["creationTimestamp"] = None
        pod = spec["template"]["spec"]
        pod.setdefault("dnsPolicy", "ClusterFirst")
        pod.setdefault("restartPolicy", "Always")
        pod.setdefault("schedulerName", "default-scheduler")
        pod.setdefault("securityContext", {})
        for container in pod["containers"]:
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("resources", {})
            _normalise_quantities(container["resources"])
            probe = container.get("readinessProbe")
            if probe and "httpGet" in probe:
                probe["httpGet"].setdefault("scheme", "HTTP")
        replicas = int(spec.get("replicas", 1))
        obj["status"] = _deployment_status(replicas, generation, ready)
        entries.append(managed("kube-controller-manager", "Update",
                               {"f:metadata": {"f:annotations": {".": {},
                                                                 "f:deployment.kubernetes.io/revision": {}}}}))
        entries.append(managed("kube-controller-manager", "Update",
                               {"f:status": {"f:availableReplicas": {}, "f:conditions": {}, "f:observedGeneration": {},
                                             "f:readyReplicas": {}, "f:replicas": {}, "f:updatedReplicas": {}}},
                               subresource="status"))
    elif kind == "PersistentVolumeClaim":
        # The binder fills these in: the volume it bound, the default StorageClass, its annotations.
        volume = f"pvc-{uid}"
        obj["spec"].update({"volumeMode": "Filesystem", "volumeName": volume})
        obj["spec"].setdefault("storageClassName", "standard")
        meta["finalizers"] = ["kubernetes.io/pvc-protection"]
        meta.setdefault("annotations", {}).update({"pv.kubernetes.io/bind-completed": "yes",
                                                   "pv.kubernetes.io/bound-by-controller": "yes"})
        obj["status"] = {"phase": "Bound", "accessModes": obj["spec"]["accessModes"],
                         "capacity": {"storage": obj["spec"]["resources"]["requests"]["storage"]}}
        entries.append(managed("kube-controller-manager", "Update", {
            "f:metadata": {"f:annotations": {"f:pv.kubernetes.io/bind-completed": {},
                                             "f:pv.kubernetes.io/bound-by-controller": {}}},
            "f:spec": {"f:volumeName": {}}}))
    elif kind == "Service":
        spec = obj["spec"]
        spec.update({"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "internalTrafficPolicy": "Cluster",
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None"})
        obj["status"] = {"loadBalancer": {}}
    elif kind == "HTTPRoute":
        meta["generation"] = generation
        obj["status"] = {"parents": [{"controllerName": "example.net/gateway-controller",
                                      "parentRef": obj["spec"]["parentRefs"][0],
                                      "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                                      "lastTransitionTime": TIMESTAMP, "message": "",
                                                      "observedGeneration": generation}]}]}
        entries.append(managed("gateway-controller", "Update", {"f:status": {"f:parents": {}}}, subresource="status"))
    meta["managedFields"] = entries
    return obj


def _deployment_status(replicas: int, generation: int, ready: bool) -> dict[str, Any]:
    available = replicas if ready else 0
    conditions = [
        {"type": "Available", "status": "True" if ready else "False",
         "reason": "MinimumReplicasAvailable" if ready else "MinimumReplicasUnavailable",
         "message": "Deployment has minimum availability." if ready else "Deployment does not have minimum "
                                                                          "availability.",
         "lastTransitionTime": TIMESTAMP, "lastUpdateTime": TIMESTAMP},
        {"type": "Progressing", "status": "True",
         "reason": "NewReplicaSetAvailable" if ready else "ReplicaSetUpdated",
         "message": "ReplicaSet has successfully progressed.", "lastTransitionTime": TIMESTAMP,
         "lastUpdateTime": TIMESTAMP},
    ]
    status: dict[str, Any] = {"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                              "conditions": conditions}
    if replicas:
        status.update({"availableReplicas": available, "readyReplicas": available})
        if not ready:
            status["unavailableReplicas"] = replicas
    return status
