"""What an image build depends on, as one key: an unchanged key means the engine would build the same image.

The key covers the build context (filtered by `.containerignore` or `.dockerignore`), and the IDs of the
local base images its FROM lines name (after ARG defaults are substituted). When a base cannot be
resolved to a local image ID the build is not skippable, and None says so: the engine decides then.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ingot.artifacts import IgnoreRules, file_listing, listing_digest
from ingot.canonical import sha256_hex

IGNORE_FILES = (".containerignore", ".dockerignore")
CONTAINERFILES = ("Containerfile", "Dockerfile")
_ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?\s*$", re.IGNORECASE)
_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)", re.IGNORECASE)
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def base_images(containerfile: str) -> list[str] | None:
    """The image references of the FROM lines, or None if one depends on something unknown."""
    defaults: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []
    for line in containerfile.splitlines():
        if (arg := _ARG.match(line)) and arg.group(2) is not None:
            defaults[arg.group(1)] = arg.group(2)
        elif match := _FROM.match(line):
            ref = _VARIABLE.sub(lambda m: defaults.get(m.group(1), "\0"), match.group(1))
            if "\0" in ref:
                return None
            if ref.lower() not in stages:
                bases.append(ref)
            alias = re.search(r"\s+AS\s+(\S+)\s*$", line, re.IGNORECASE)
            if alias:
                stages.add(alias.group(1).lower())
    return bases


def image_input_key(context: Path, resolve: Callable[[str], str | None], build_args: dict[str, str]) -> str | None:
    containerfile = next((context / name for name in CONTAINERFILES if (context / name).is_file()), None)
    if containerfile is None or build_args:
        return None
    bases = base_images(containerfile.read_text(errors="replace"))
    if bases is None:
        return None
    base_ids = []
    for ref in bases:
        image_id = resolve(ref)
        if image_id is None:
            return None
        base_ids.append(image_id)
    patterns: list[str] = []
    for name in IGNORE_FILES:
        if (context / name).is_file():
            patterns = (context / name).read_text(errors="replace").splitlines()
            break
    listing = file_listing(context, ignore=IgnoreRules(patterns).is_ignored)
    return "image-input:" + sha256_hex("\0".join([listing_digest(listing), *base_ids]))
