"""`.ingotignore`: gitignore-style rules for what of a build context goes into an artifact.

Patterns follow git's rules (`*.pyc`, `dir/`, `/anchored`, `!negation`, `**`), matched by `pathspec`.
As in git, a file inside an ignored directory cannot be re-included by a negation, because the
directory is never entered. `.ingotignore` itself is part of the input: changing the rules changes
what is built, so it must change the input key.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pathspec

from ingot.errors import UserInputError

IGNORE_FILE = ".ingotignore"

# Version control, ingot's own state and bytecode never belong in an artifact, whatever the file says;
# bytecode in particular would make digests depend on which interpreter last touched the tree.
# `/.ingot-deps/` is where a build installs requirements: a stale copy in the context must not mix in.
ALWAYS_IGNORED: tuple[str, ...] = (".git/", ".ingot/", "__pycache__/", "*.pyc", "/.ingot-deps/")

_ALWAYS = pathspec.GitIgnoreSpec.from_lines(ALWAYS_IGNORED)


class IgnoreRules:
    """Decides, per relative POSIX path, whether an entry of a build context is left out."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        # pathspec itself skips blank lines and `#` comments, with git's escaping rules.
        self.patterns = list(patterns)
        self._spec = pathspec.GitIgnoreSpec.from_lines(self.patterns)

    @classmethod
    def from_context(cls, context: Path, extra: Iterable[str] = ()) -> IgnoreRules:
        """The rules of `context/.ingotignore` (or only the built-in ones if there is none) plus `extra`."""
        path = context / IGNORE_FILE
        if not path.is_file():
            return cls(extra)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise UserInputError(f"{path}: not valid UTF-8 ({exc.reason})") from exc
        _check_lines(path, lines)
        return cls([*lines, *extra])

    def is_ignored(self, rel_path: str, is_dir: bool) -> bool:
        """True if the entry at `rel_path` (relative POSIX path) is left out of the artifact."""
        # pathspec tells directories from files by a trailing slash: that is what makes `build/` match
        # the directory but not a file named `build`.
        candidate = rel_path + "/" if is_dir else rel_path
        return _ALWAYS.match_file(candidate) or self._spec.match_file(candidate)


def load_ignore(context: Path) -> IgnoreRules:
    """Shorthand for `IgnoreRules.from_context(context)`."""
    return IgnoreRules.from_context(context)


def _check_lines(path: Path, lines: list[str]) -> None:
    # Compiling line by line costs little and lets the error name the offending line.
    for number, line in enumerate(lines, start=1):
        try:
            pathspec.GitIgnoreSpec.from_lines([line])
        except ValueError as exc:
            raise UserInputError(
                f"{path}:{number}: invalid pattern {line!r}",
                details=["patterns follow .gitignore syntax, e.g. `*.log`, `build/`, `/top`, `!keep.txt`"],
            ) from exc
