"""Spec problems in plain words: pydantic's errors translated, located by key path.

A `Problem` knows WHERE (a key path such as ``services.web.port``) and WHAT (a sentence for people).
The loader turns the key path into ``FILE:LINE``; code that builds specs in memory has no file and
shows the key path alone.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ingot.errors import UserInputError

Loc = tuple[str | int, ...]

# Type of the errors our own cross-field rules raise; ctx["key"] names the offending field so the
# report can point at that key's line instead of at the whole mapping.
RULE_ERROR = "ingot_rule"
RELATED = "{related}"


class SpecError(UserInputError):
    """ingot.yaml is wrong: `message` summarises, `details` has one ``FILE:LINE: key: problem`` each."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec.

    `message` may contain ``{related}``, replaced by a description of `related` (another key path the
    problem involves, e.g. the other user of a listen address) when the problem is rendered.
    """

    loc: Loc
    message: str
    related: Loc | None = None

    def render(self, describe: Callable[[Loc], str] | None = None) -> str:
        """``key.path: message``, with `describe` turning `related` into text (default: its key path)."""
        text = self.message
        if self.related is not None:
            text = text.replace(RELATED, (describe or dotted)(self.related))
        return f"{dotted(self.loc)}: {text}" if self.loc else text


def dotted(loc: Loc) -> str:
    """``services.web.strategy.steps[0].weight``: how people would write the path by hand."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def problems_from_error(exc: ValidationError, root: type[BaseModel], prefix: Loc = ()) -> list[Problem]:
    """Translate every error in `exc` (raised validating `root`) into a Problem under `prefix`."""
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        ctx = error.get("ctx") or {}
        if error["type"] == RULE_ERROR and "key" in ctx:
            loc = (*loc, ctx["key"])
        is_key = bool(loc) and loc[-1] == "[key]"
        if is_key:
            loc = loc[:-1]
        message = _describe(error["type"], error["msg"], error.get("input"), ctx, root, loc)
        if is_key:
            message = f"invalid name: {message}"
        problem = Problem((*prefix, *loc), message)
        if problem not in problems:
            problems.append(problem)
    return problems


def summary(source: str, count: int) -> str:
    return f"{source}: {count} problem{'' if count == 1 else 's'}"


def spec_error(source: str, lines: Iterable[str]) -> SpecError:
    details = list(lines)
    return SpecError(summary(source, len(details)), details=details)


def show(value: object) -> str:
    """A value as the user wrote it in YAML, short enough for one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}

_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _describe(kind: str, msg: str, value: Any, ctx: dict[str, Any], root: type[BaseModel], loc: Loc) -> str:
    if kind == "missing":
        return "required, but missing"
    if kind == "extra_forbidden":
        return unknown_key(str(loc[-1]), _allowed_keys(root, loc[:-1]))
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]}, got {show(value)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"expected one of: {', '.join(choices)}; got {show(value)}"
    if kind in _BOUND_ERRORS:
        return _bounds(_field_at(root, loc), kind, ctx, value)
    if kind == "too_short":
        count = ctx.get("min_length", 1)
        return f"needs at least {count} entr{'y' if count == 1 else 'ies'}"
    if kind in ("value_error", "assertion_error"):
        return re.sub(r"^(Value error|Assertion failed), ", "", msg)
    if kind == RULE_ERROR:
        return str(ctx.get("detail", msg))
    return msg


def unknown_key(key: str, allowed: list[str]) -> str:
    if not allowed:
        return "unknown key"
    text = f"unknown key; expected one of {', '.join(allowed)}"
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"{text} (did you mean {close[0]}?)" if close else text


def _bounds(field: FieldInfo | None, kind: str, ctx: dict[str, Any], value: Any) -> str:
    limits = _limits(field) if field is not None else {}
    low, high = limits.get("ge"), limits.get("le")
    if low is not None and high is not None:
        return f"must be between {low} and {high}, got {show(value)}"
    words = {
        "greater_than": ("must be greater than", "gt"),
        "greater_than_equal": ("must be at least", "ge"),
        "less_than": ("must be less than", "lt"),
        "less_than_equal": ("must be at most", "le"),
    }
    phrase, key = words[kind]
    return f"{phrase} {ctx.get(key)}, got {show(value)}"


def _limits(field: FieldInfo) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    for item in field.metadata:
        if isinstance(item, Ge):
            limits["ge"] = item.ge
        elif isinstance(item, Gt):
            limits["gt"] = item.gt
        elif isinstance(item, Le):
            limits["le"] = item.le
        elif isinstance(item, Lt):
            limits["lt"] = item.lt
    return limits


def _allowed_keys(root: type[BaseModel], loc: Loc) -> list[str]:
    model = _unwrap(_resolve(root, loc)[0])
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _field_at(root: type[BaseModel], loc: Loc) -> FieldInfo | None:
    return _resolve(root, loc)[1]


def _resolve(root: type[BaseModel], loc: Loc) -> tuple[Any, FieldInfo | None]:
    """Follow `loc` through the model's annotations: the type found there and, if the last step was a
    model field, its FieldInfo (which carries the bounds we quote in messages)."""
    current: Any = root
    field: FieldInfo | None = None
    for part in loc:
        current = _unwrap(current)
        field = None
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None, None
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return None, None
    return current, field


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional/Union so the model or container underneath is visible."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            models = [arg for arg in members if isinstance(arg, type) and issubclass(arg, BaseModel)]
            annotation = (models or members)[0]
        else:
            return annotation
