"""A loaded project: its spec, its state directory and its stores, opened once per command."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from ingot import ledger
from ingot.actor import current_actor
from ingot.artifacts import ArtifactStore
from ingot.errors import UserInputError
from ingot.paths import StatePaths, explicit_state_dir
from ingot.signing import pin_path
from ingot.spec import LoadedSpec, load_spec
from ingot.state_layout import project_state
from ingot.store import Store


@dataclass
class Project:
    spec: LoadedSpec
    paths: StatePaths
    _closed: bool = field(default=False, repr=False)

    @cached_property
    def store(self) -> Store:
        return Store(self.paths.root)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.paths.artifacts)

    def environment(self, name: str | None) -> str:
        if name is None:
            return self.spec.default_environment
        if name not in self.spec.environment_names:
            known = ", ".join(self.spec.environment_names)
            raise UserInputError(f"{self.spec.path.name}: unknown environment {name!r}; the spec defines: {known}")
        return name

    def services(self, name: str | None) -> list[str]:
        if name is None:
            return list(self.spec.services)
        if name not in self.spec.services:
            known = ", ".join(self.spec.services)
            raise UserInputError(f"{self.spec.path.name}: unknown service {name!r}; the spec defines: {known}")
        return [name]

    def git_commit(self) -> str | None:
        """The commit of the spec's work tree, marked `-dirty` when it has uncommitted changes."""
        root = self.spec.root_dir
        try:
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "."],
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        return f"{head}-dirty" if dirty else head


def open_project(spec_file: Path, state_dir: Path | None = None) -> Project:
    """The spec's project with its state: `state_dir` (--state), else $INGOT_HOME, else `.ingot/<project>/`
    beside the spec, where a state of the older shared layout that belongs to it is moved (recorded)."""
    spec = load_spec(spec_file)
    explicit = explicit_state_dir(state_dir)
    pin = pin_path(spec.path)
    if explicit is not None:
        return Project(spec=spec, paths=replace(explicit.secure(), pin=pin))
    resolved = project_state(spec.path.resolve().parent, spec.project)
    project = Project(spec=spec, paths=replace(resolved.paths.secure(), pin=pin))
    if resolved.moved_from is not None:
        ledger.record(project.store, actor=current_actor(), action="state.move",
                      payload={"from": str(resolved.moved_from), "to": str(resolved.paths.root),
                               "project": spec.project, "claimed": resolved.claimed,
                               "note": "the older layout shared .ingot/ between the specs of a directory"})
    return project
