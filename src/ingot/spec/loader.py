"""Read ingot.yaml: YAML with line numbers, validation, and every problem reported as FILE:LINE.

PyYAML's composer gives a node tree with marks; we walk it once to map each key path to its line
(and to catch duplicate keys, which PyYAML silently lets the last one win), then construct plain
data from the same tree and validate it with the models.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ingot.spec.models import LoadedSpec, Spec, cross_check
from ingot.spec.problems import Loc, Problem, SpecError, dotted, problems_from_error, spec_error

__all__ = ["SpecError", "key_line", "load_spec", "parse_spec"]

DEFAULT_FILENAME = "ingot.yaml"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_spec(path: Path | str) -> LoadedSpec:
    """Load and fully check the spec at `path` (a directory means its ingot.yaml).

    Raises SpecError listing every problem found, each as ``FILE:LINE: key.path: what is wrong``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / DEFAULT_FILENAME
    return parse_spec(_read(path), path)


def parse_spec(text: str, path: Path | str) -> LoadedSpec:
    """Check `text` as the content of the spec file `path` (which need not exist, e.g. for an upload)."""
    path = Path(path)
    source = str(path)
    data, lines = _parse_yaml(text, source)
    spec, problems = _check(data, path.absolute())
    problems = [*lines.duplicates, *problems]
    if spec is None or problems:  # spec is None only with problems; the test narrows the type
        # Reading order: a person fixes the file top to bottom.
        problems.sort(key=lambda problem: lines.line_of(problem.loc))
        raise spec_error(source, (lines.render(problem, source) for problem in problems))
    return spec


def key_line(path: Path, loc: Loc) -> int | None:
    """The line of the key `loc` in the spec file at `path`, for problems found after loading (or None)."""
    try:
        _data, lines = _parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, ValueError, SpecError):
        return None
    return lines.lines.get(tuple(str(part) for part in loc))


def _read(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(
            f"no spec file at {path}",
            details=[f"looked for {path.absolute()}; run from the project directory or pass -f/--file PATH"],
        ) from None
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        # utf-8-sig: editors on Windows like to prepend a BOM, which is not part of the YAML.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise spec_error(str(path), [f"{path}:{line}: not UTF-8 text ({exc.reason})"]) from None


# --- YAML with line numbers ------------------------------------------------------------------------


@dataclass
class LineMap:
    """Key path (stringified parts) -> 1-based line of the key (or of the list item)."""

    lines: dict[tuple[str, ...], int] = field(default_factory=dict)
    duplicates: list[Problem] = field(default_factory=list)

    def line_of(self, loc: Loc) -> int:
        """The line of `loc`, or of its nearest ancestor present in the file (for missing keys)."""
        parts = tuple(str(part) for part in loc)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return 1

    def has(self, loc: Loc) -> bool:
        return tuple(str(part) for part in loc) in self.lines

    def render(self, problem: Problem, source: str) -> str:
        def describe(related: Loc) -> str:
            if self.has(related):
                return f"{dotted(related)} at {source}:{self.line_of(related)}"
            return f"{dotted(related)}, the default"

        return f"{source}:{self.line_of(problem.loc)}: {problem.render(describe)}"


def _parse_yaml(text: str, source: str) -> tuple[Any, LineMap]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines = LineMap()
        if node is not None:
            # Before constructing: construction flattens merge keys in place, which loses duplicates.
            _map_node(node, (), lines, set())
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise spec_error(source, [_yaml_problem(exc, source)]) from None
    except yaml.YAMLError as exc:
        raise spec_error(source, [_reader_problem(exc, text, source)]) from None
    finally:
        loader.dispose()
    return data, lines


def _yaml_problem(exc: yaml.MarkedYAMLError, source: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 1
    problem = exc.problem or exc.context or "cannot parse"
    if exc.context and exc.problem and exc.context_mark is not None:
        problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return f"{source}:{line}: invalid YAML: {problem}"


def _reader_problem(exc: yaml.YAMLError, text: str, source: str) -> str:
    # ReaderError (e.g. a control character) has a character position but no line mark.
    position = getattr(exc, "position", None)
    line = text[:position].count("\n") + 1 if isinstance(position, int) else 1
    reason = getattr(exc, "reason", None) or str(exc)
    return f"{source}:{line}: invalid YAML: {reason}"


def _map_node(node: yaml.Node, path: tuple[str, ...], lines: LineMap, seen: set[int]) -> None:
    # Aliases reuse node objects; mapping each node once keeps recursive and "billion laughs"
    # documents linear. Paths through an alias then resolve to the alias's own key, which is fine.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        _map_mapping(node, path, lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.lines.setdefault((*path, str(index)), item.start_mark.line + 1)
            _map_node(item, (*path, str(index)), lines, seen)


def _map_mapping(node: yaml.MappingNode, path: tuple[str, ...], lines: LineMap, seen: set[int]) -> None:
    first_line: dict[str, int] = {}
    merged: list[yaml.Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            merged.append(value_node)
            continue
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
        line = key_node.start_mark.line + 1
        if key in first_line:
            lines.duplicates.append(
                Problem(
                    (*path, key),
                    f"duplicate key (first at line {first_line[key]}); YAML would silently keep only "
                    "the last one, remove one of them",
                )
            )
        else:
            first_line[key] = line
        # The last duplicate is the value YAML keeps, so point at it.
        lines.lines[(*path, key)] = line
        _map_node(value_node, (*path, key), lines, seen)
    for source in _merge_sources(merged):
        # `<<: *defaults` supplies keys not written here; their lines are in the anchored mapping.
        for key_node, value_node in source.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            if (*path, key) not in lines.lines:
                lines.lines[(*path, key)] = key_node.start_mark.line + 1
                _map_node(value_node, (*path, key), lines, seen)


def _merge_sources(values: list[yaml.Node]) -> Iterator[yaml.MappingNode]:
    for value in values:
        if isinstance(value, yaml.MappingNode):
            yield value
        elif isinstance(value, yaml.SequenceNode):
            yield from (item for item in value.value if isinstance(item, yaml.MappingNode))


# --- validation ------------------------------------------------------------------------------------


def _check(data: Any, path: Path) -> tuple[LoadedSpec | None, list[Problem]]:
    if data is None:
        return None, [Problem((), "the file is empty; expected a mapping with project and services")]
    if not isinstance(data, Mapping):
        return None, [Problem((), "expected a mapping with project and services at the top level")]
    spec: LoadedSpec | None = None
    problems: list[Problem] = []
    try:
        spec = LoadedSpec.parse(data, path, cross_checks=False)
    except ValidationError as exc:
        problems.extend(problems_from_error(exc, Spec))
    # Cross checks run on the raw data, so override problems show up even while a base is broken.
    services, environments = data.get("services"), data.get("environments") or {}
    if isinstance(services, Mapping) and isinstance(environments, Mapping):
        problems.extend(cross_check(services, environments))
        if path.is_file():  # a spec checked before it is saved anywhere (an upload) has no directory to look in
            problems.extend(_route_file_problems(services, environments, path.parent))
    return spec, problems


def _route_file_problems(services: Mapping[str, Any], environments: Mapping[str, Any], root: Path) -> list[Problem]:
    """`routes[].tls: {cert, key}` name files relative to the spec's directory: they must exist."""
    places: list[tuple[Loc, Any]] = [(("services", name), svc) for name, svc in services.items()]
    for env, raw in environments.items():
        overrides = raw.get("services") if isinstance(raw, Mapping) else None
        if isinstance(overrides, Mapping):
            places += [(("environments", env, "services", name), svc) for name, svc in overrides.items()]
    problems = []
    for prefix, service in places:
        routes = service.get("routes") if isinstance(service, Mapping) else None
        for index, route in enumerate(routes if isinstance(routes, list) else []):
            tls = route.get("tls") if isinstance(route, Mapping) else None
            for key in ("cert", "key"):
                name = tls.get(key) if isinstance(tls, Mapping) else None
                if isinstance(name, str) and name and not (root / name).is_file():
                    problems.append(Problem((*prefix, "routes", index, "tls", key),
                                            f"no such file {name!r} (relative to {root})"))
    return problems
