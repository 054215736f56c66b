"""Durations as people write them in ingot.yaml ("500ms", "1.5s", "2m", "1m30s") or as plain seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = r"(\d+(?:\.\d+)?)(ms|s|m|h)"
_COMPOUND = re.compile(rf"(?:{_PART})+")
_PARTS = re.compile(_PART)
_BARE_NUMBER = re.compile(r"\d+(?:\.\d+)?")

# The same grammar for editors; ECMA-262 regex, so no possessive or lookbehind tricks.
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?|(\d+(\.\d+)?(ms|s|m|h))+)\s*$"
EXPECTED = "expected a duration like 500ms, 1s, 1.5s, 2m, 1h or 1m30s (or a number of seconds)"


def parse_duration(value: object) -> float:
    """Return `value` in seconds; raise ValueError with a message for people if it is not a duration.

    Numbers are seconds. Strings are a number followed by a unit (ms, s, m, h), several of them
    concatenated ("1m30s"), or a bare number of seconds. Negative, NaN and infinite values are refused
    because every duration in the spec is a wait or a timeout.
    """
    # bool is an int subclass; `timeout: yes` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{EXPECTED}, got {value!r}")
    seconds = _seconds_of_text(value) if isinstance(value, str) else float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{EXPECTED}, got {value!r}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return seconds


def _seconds_of_text(text: str) -> float:
    compact = text.strip()
    if _BARE_NUMBER.fullmatch(compact):
        return float(compact)
    if not _COMPOUND.fullmatch(compact):
        raise ValueError(f"{EXPECTED}, got {text!r}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PARTS.findall(compact))


def _validate(value: Any) -> float:
    return parse_duration(value)


DURATION_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": DURATION_PATTERN},
    ],
    "description": "seconds, or a duration such as 500ms, 1.5s, 2m, 1h, 1m30s",
}

# A float of seconds inside the program; number-or-string in the schema editors see.
Duration = Annotated[float, BeforeValidator(_validate), WithJsonSchema(DURATION_JSON_SCHEMA)]
