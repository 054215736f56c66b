"""Drift on a cluster: live objects against the rendered release, without false positives.

The API server fills in many fields ingot never wrote (a Deployment's strategy, a container's
terminationMessagePath, a Service's clusterIP, a probe's scheme...). Comparing whole objects would
report all of them as drift, which is the classic false "OutOfSync" of GitOps tools. So:

- `compare` walks only the fields ingot rendered and reports those the live object lacks or holds
  differently (quantities by value: the server writes "0.5" CPU back as "500m");
- `foreign_fields` reads the live object's managedFields and reports fields that another client set
  (`kubectl edit`, `kubectl set env`, a mutating controller) where ingot set none. Fields the server
  defaulted belong to no manager, so they never show up; status belongs to controllers and is skipped.

Both are pure functions of plain dicts, so realistic server answers are enough to test them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ingot.config_store import SECRET_DIFFERS, SECRET_MASK
from ingot.kube.names import MANAGER
from ingot.spec.quantities import same_quantity

MERGE_KEYS = ("name", "mountPath", "containerPort", "port")
# Set by controllers on objects they watch, never by a person: not drift.
IGNORED_FOREIGN = ("metadata.annotations.deployment.kubernetes.io/revision",)
SECRET_PATHS = ("data", "stringData")
CONTROLLED_KINDS = ("PersistentVolumeClaim",)  # kinds whose fields controllers fill in after ingot's apply


@dataclass(frozen=True)
class Difference:
    """One field that differs: where, what ingot rendered, what the cluster has (and who set it)."""

    path: str
    expected: Any
    actual: Any
    manager: str | None = None  # for a field set by another client: its field manager
    pointer: str | None = None  # its JSON pointer in the live object, to remove it

    def describe(self) -> str:
        if self.manager is not None:
            return f"{self.path}: set by {self.manager} to {_show(self.actual)} (ingot sets nothing there)"
        if self.actual is _MISSING:
            return f"{self.path}: missing (ingot sets {_show(self.expected)})"
        return f"{self.path}: {_show(self.actual)} (ingot sets {_show(self.expected)})"

    def as_dict(self) -> dict[str, Any]:
        data = {"path": self.path, "expected": _plain(self.expected), "actual": _plain(self.actual)}
        if self.manager is not None:
            data["manager"] = self.manager
        return data


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING: Any = _Missing()


def _plain(value: Any) -> Any:
    return None if value is _MISSING else value


def _show(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


# ---- what ingot set, as the server holds it --------------------------------------------------------


def compare(rendered: Mapping[str, Any], live: Mapping[str, Any]) -> list[Difference]:
    """The fields of `rendered` that `live` lacks or holds differently; everything else in `live` is
    the server's or another client's, and is left to `foreign_fields`."""
    found: list[Difference] = []
    for key in sorted(rendered):
        if key in ("status",):
            continue
        _walk(rendered[key], live.get(key, _MISSING), key, found)
    if rendered.get("kind") == "Secret":
        return [_masked(d) if d.path.split(".")[0].split("[")[0] in SECRET_PATHS else d for d in found]
    return found


def _walk(want: Any, have: Any, path: str, found: list[Difference]) -> None:
    if have is _MISSING:
        found.append(Difference(path, want, _MISSING))
    elif isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            found.append(Difference(path, want, have))
            return
        for key in sorted(want):
            _walk(want[key], have.get(key, _MISSING), f"{path}.{key}", found)
    elif isinstance(want, list):
        _walk_list(want, have, path, found)
    elif not _same_scalar(want, have, path):
        found.append(Difference(path, want, have))


def _walk_list(want: list[Any], have: Any, path: str, found: list[Difference]) -> None:
    if not isinstance(have, list):
        found.append(Difference(path, want, have))
        return
    key = _merge_key(want)
    if key is None:
        # An atomic list (args, capability names, hostnames): the whole list is one value.
        if len(want) != len(have):
            found.append(Difference(path, want, have))
            return
        for index, (item_want, item_have) in enumerate(zip(want, have, strict=True)):
            _walk(item_want, item_have, f"{path}[{index}]", found)
        return
    by_key = {item.get(key): item for item in have if isinstance(item, Mapping)}
    wanted_keys = {item[key] for item in want}
    for item in want:
        _walk(item, by_key.get(item[key], _MISSING), f"{path}[{key}={item[key]}]", found)
    for item_key, item in by_key.items():
        # No server default adds items to the keyed lists ingot renders (containers, env, ports, volumes,
        # mounts, backends): an extra one was put there by someone.
        if item_key not in wanted_keys:
            found.append(Difference(f"{path}[{key}={item_key}]", _MISSING, dict(item)))


def _merge_key(items: list[Any]) -> str | None:
    if not items or not all(isinstance(item, Mapping) for item in items):
        return None
    return next((key for key in MERGE_KEYS if all(key in item for item in items)), None)


def _same_scalar(want: Any, have: Any, path: str) -> bool:
    if ".resources." in path or path.startswith("resources."):
        return same_quantity(want, have)
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have
    return bool(want == have)


def _masked(difference: Difference) -> Difference:
    actual = difference.actual if difference.actual is _MISSING else SECRET_DIFFERS
    expected = difference.expected if difference.expected is _MISSING else SECRET_MASK
    return Difference(difference.path, expected, actual, difference.manager, difference.pointer)


# ---- what others set ----------------------------------------------------------------------------


def foreign_fields(rendered: Mapping[str, Any], live: Mapping[str, Any], manager: str = MANAGER) -> list[Difference]:
    """Fields of `live` that another field manager set where `rendered` has nothing.

    Entries of `manager` itself (its applies, and its scale updates) and of the status subresource are
    skipped. A field two managers share (someone applied ingot's own value) is not foreign.
    """
    found: dict[str, Difference] = {}
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager or entry.get("subresource") == "status":
            continue
        fields = entry.get("fieldsV1") or {}
        for path, pointer, value in _foreign_paths(fields, rendered, live, "", ""):
            if path in IGNORED_FOREIGN or path.startswith("status"):
                continue
            found.setdefault(path, Difference(path, _MISSING, value, str(entry.get("manager")), pointer))
    if live.get("kind") == "Secret":
        return [_masked(d) for d in found.values()]
    return [found[path] for path in sorted(found)]


def _foreign_paths(fields: Mapping[str, Any], ours: Any, theirs: Any, path: str,
                   pointer: str) -> Iterable[tuple[str, str, Any]]:
    """(path for people, JSON pointer into `theirs`, value) of each topmost field in `fields` not in `ours`."""
    for raw, children in sorted(fields.items()):
        if raw == ".":
            continue
        kind, _, body = raw.partition(":")
        if kind == "f":
            step, mine, live = f"{path}.{body}" if path else body, _get(ours, body), _get(theirs, body)
            where = f"{pointer}/{_escape(body)}"
        elif kind == "k":
            selector = json.loads(body)
            step = f"{path}[{','.join(f'{k}={v}' for k, v in sorted(selector.items()))}]"
            mine, live = _item(ours, selector), _item(theirs, selector)
            where = f"{pointer}/{_index(theirs, selector)}"
        elif kind == "v":
            value = json.loads(body)
            step = f"{path}[={value}]"
            mine = value if isinstance(ours, list) and value in ours else _MISSING
            live = value
            where = f"{pointer}/{theirs.index(value) if isinstance(theirs, list) and value in theirs else '-'}"
        else:  # "i:" (by index) is not used by the types ingot renders; judge the list as a whole
            step, mine, live, where = f"{path}[{body}]", ours if isinstance(ours, list) else _MISSING, theirs, pointer
        if mine is _MISSING:
            yield step, where, _plain(live)
        elif children:
            yield from _foreign_paths(children, mine, live, step, where)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _index(node: Any, selector: Mapping[str, Any]) -> str:
    if isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, Mapping) and all(_same_scalar(v, item.get(k), "") for k, v in selector.items()):
                return str(index)
    return "-"


def _get(node: Any, key: str) -> Any:
    return node.get(key, _MISSING) if isinstance(node, Mapping) else _MISSING


def _item(node: Any, selector: Mapping[str, Any]) -> Any:
    if not isinstance(node, Sequence) or isinstance(node, str):
        return _MISSING
    for item in node:
        if isinstance(item, Mapping) and all(_same_scalar(v, item.get(k), "") for k, v in selector.items()):
            return item
    return _MISSING


# ---- objects --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectDrift:
    """What is wrong with one object: missing, extra (labelled by ingot, not expected), or changed."""

    kind: str
    name: str
    problem: str  # missing | extra | changed
    differences: tuple[Difference, ...] = ()

    @property
    def repair(self) -> str:
        if self.problem == "missing":
            return "apply it"
        if self.problem == "extra":
            return "delete it"
        if self.kind in ("ConfigMap", "Secret"):
            return "replace it (it is immutable: delete and create again)"
        if any(d.manager for d in self.differences):
            return "remove the fields others set, then apply it again (server-side, field manager ingot)"
        return "apply it again (server-side, field manager ingot)"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "problem": self.problem, "repair": self.repair,
                "differences": [d.describe() for d in self.differences]}


def object_id(obj: Mapping[str, Any]) -> tuple[str, str]:
    return str(obj["kind"]), str(obj["metadata"]["name"])


def compare_objects(expected: Sequence[Mapping[str, Any]], live: Sequence[Mapping[str, Any]],
                    tolerated: Iterable[tuple[str, str]] = ()) -> list[ObjectDrift]:
    """Every expected object against its live self; live objects neither expected nor `tolerated`
    (kept Deployments of earlier releases, their config) are extra."""
    by_id = {object_id(obj): obj for obj in live}
    allowed = set(tolerated)
    found: list[ObjectDrift] = []
    for want in expected:
        key = object_id(want)
        have = by_id.get(key)
        if have is None:
            found.append(ObjectDrift(*key, "missing"))
            continue
        # A claim's binding (volumeName, bind annotations, finalizers) is the volume controller's by design.
        foreign = foreign_fields(want, have) if key[0] not in CONTROLLED_KINDS else []
        claimed = {d.path for d in foreign}
        # An item another client added shows up in both; who added it is the more useful evidence.
        differences = [*(d for d in compare(want, have) if d.path not in claimed), *foreign]
        if differences:
            found.append(ObjectDrift(*key, "changed", tuple(differences)))
    wanted = {object_id(obj) for obj in expected}
    for key in sorted(set(by_id) - wanted - allowed):
        found.append(ObjectDrift(*key, "extra"))
    return found
