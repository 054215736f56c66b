"""Which machine this is, for a state store that several machines share (PostgreSQL, README: Running ingot
for a team). Instances, deployments and activations record the machine that made them, so that an agent
recovers, supervises and heals only its own machine's services, and an environment runs on one machine at a
time. Rows written before the store knew machines have none (NULL): they count as this machine's, which is
what they were in a store that one machine used."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ingot.errors import UserInputError

if TYPE_CHECKING:
    from ingot.store import ActivationRow, InstanceRow, Store

MACHINE_ENV = "INGOT_MACHINE"
# A host name's characters (RFC 1123 labels, dots between), at most a host name's length.
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,252})\Z")


def machine_name() -> str:
    """$INGOT_MACHINE if set, else the host name; refused (exit 2, naming the variable) if it is not a name."""
    given = os.environ.get(MACHINE_ENV)
    name = given if given is not None else socket.gethostname()
    if not _NAME.match(name):
        where = f"{MACHINE_ENV}={name!r}" if given is not None else f"the host name {name!r}"
        raise UserInputError(f"{where} is not a machine name: expected letters, digits, '.', '_' or '-' "
                             f"(starting with a letter or digit, at most 253), e.g. {MACHINE_ENV}=ci-1")
    return name


def refuse_if_elsewhere(store: Store, environment: str, command: str) -> None:
    """Refuse (exit 2, before anything changes) an operation on `environment` when what runs of it runs on
    another machine: only that machine's agent can start, stop or route its instances."""
    others = store.elsewhere(environment)
    if not others:
        return
    there = sorted(others)[0]
    raise UserInputError(
        f"{environment} runs on machine {there}, not on this one ({store.machine}): 'ingot {command}' would "
        f"start or stop instances that machine's agent owns",
        details=[f"run 'ingot {command}' on {there}, or from here with --server pointing at {there}'s "
                 "'ingot serve'",
                 f"or take it down there first ('ingot down --env {environment}' on {there}) to move it here",
                 f"if this is {there} under a new name, set {MACHINE_ENV}={there}"])


def service_machine(activation: ActivationRow, live: Sequence[InstanceRow]) -> str | None:
    """The machine a service runs on, as `ingot status` names it: its live instances' (the newest's), else the
    machine that activated it; None when no row names one (recorded before the store knew machines)."""
    named = [row.machine for row in live if row.machine]
    return named[-1] if named else activation.machine
