"""Artifacts: tree digests, the content-addressed store, and builds for the process runtime."""

from __future__ import annotations

from ingot.artifacts.build import (
    BuildResult,
    BuildSteps,
    build_artifact,
    cached_build,
    deps_dir,
    input_key,
    interpreter_tag,
)
from ingot.artifacts.digest import (
    diff_listings,
    file_listing,
    is_digest,
    listing_digest,
    tree_digest,
)
from ingot.artifacts.ignore import ALWAYS_IGNORED, IGNORE_FILE, IgnoreRules, load_ignore
from ingot.artifacts.store import ArtifactCorrupt, ArtifactNotFound, ArtifactStore

__all__ = [
    "ALWAYS_IGNORED",
    "IGNORE_FILE",
    "ArtifactCorrupt",
    "ArtifactNotFound",
    "ArtifactStore",
    "BuildResult",
    "BuildSteps",
    "IgnoreRules",
    "build_artifact",
    "cached_build",
    "deps_dir",
    "diff_listings",
    "file_listing",
    "input_key",
    "interpreter_tag",
    "is_digest",
    "listing_digest",
    "load_ignore",
    "tree_digest",
]
