"""One runtime object per kind, made when first needed (the docker SDK is not imported otherwise)."""

from __future__ import annotations

from ingot.errors import UserInputError
from ingot.runtimes.base import Runtime
from ingot.runtimes.process import ProcessRuntime
from ingot.store import InstanceRow


class Runtimes:
    def __init__(self) -> None:
        self._made: dict[str, Runtime] = {}

    def get(self, name: str) -> Runtime:
        runtime = self._made.get(name)
        if runtime is None:
            runtime = self._make(name)
            self._made[name] = runtime
        return runtime

    def of(self, instance: InstanceRow) -> Runtime:
        return self.get(instance.runtime)

    @staticmethod
    def _make(name: str) -> Runtime:
        if name == "process":
            return ProcessRuntime()
        if name == "docker":
            from ingot.runtimes.docker import DockerRuntime

            return DockerRuntime()
        raise UserInputError(f"runtime {name!r} is not available on this machine's agent")
