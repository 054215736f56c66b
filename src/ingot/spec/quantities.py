"""Kubernetes resource quantities ("250m", "0.5", "128Mi", "1G", "1e3") as exact numbers.

The spec takes them as people write them for Kubernetes; comparing two of them (a request above its limit,
or a value the API server rewrote from "0.5" to "500m") needs their value, not their spelling.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

PATTERN = r"^(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$"
_QUANTITY = re.compile(PATTERN)
_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}


def quantity_value(text: str) -> Decimal:
    """The value of a quantity; ValueError (with a message for people) if `text` is not one."""
    match = _QUANTITY.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"expected a Kubernetes quantity such as 250m, 0.5, 128Mi or 1G, got {text!r}")
    number, suffix = match.group(1), match.group(3) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number) * Decimal(10) ** int(suffix[1:])
        return Decimal(number) * _SUFFIX[suffix]
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number Kubernetes can hold") from None


def same_quantity(a: object, b: object) -> bool:
    """Whether two quantities are equal in value ("0.5" and "500m" are); non-quantities compare as is."""
    if isinstance(a, str | int | float) and isinstance(b, str | int | float):
        try:
            return quantity_value(str(a)) == quantity_value(str(b))
        except ValueError:
            pass
    return a == b
