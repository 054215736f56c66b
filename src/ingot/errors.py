"""Errors meant for people: each carries a message that is shown as is, without a traceback.

`UserInputError` means bad input (exit code 2); `OperationFailed` means a failed operation (exit 1).
"""

from __future__ import annotations


class IngotError(Exception):
    """Base of every error ingot reports to a person instead of a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def __str__(self) -> str:
        return "\n".join([self.message, *self.details])


class UserInputError(IngotError):
    """The input (spec, flags, arguments) is wrong; nothing was done."""

    exit_code = 2


class OperationFailed(IngotError):
    """An operation was attempted and failed; what still serves is said in the message."""

    exit_code = 1


class AlreadyRunning(OperationFailed):
    """A daemon (agent, edge) is already running for that state: the supervisor has nothing to restart."""

    exit_code = 75  # EX_TEMPFAIL; `ingot.supervision` treats it as a final answer, not a crash
