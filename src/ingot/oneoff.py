"""One-off instances: a command run once in a fresh instance of a release, then gone.

Two callers share this one mechanism: a service's `release_command` (run by the agent as a plan step,
before any instance of a new release starts) and `ingot run` (run by the CLI, attached to the terminal).
A one-off instance is built from the same template as the release's serving instances (the executor's
`request_template`: same verified artifact checkout, env, config, secrets, instance user, rlimits,
cgroup limits, container hardening), with only its command swapped. It is never a row of the
instances table (it takes no traffic, is never healed or replaced), and it carries no `INGOT_STATE`
label, so that drift and self-heal do not take it for a stray of the service and stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ingot import ledger, terminal
from ingot.checks import masker
from ingot.errors import OperationFailed
from ingot.executor import Deployment, Emit, Executor, StepFailed
from ingot.paths import StatePaths
from ingot.plan import Plan, Step
from ingot.rollout_control import RolloutAborted
from ingot.runtimes.base import InstanceRequest
from ingot.runtimes.registry import Runtimes
from ingot.store import InstanceRow, ReleaseRow, Store

SUCCEEDED = "release_command.succeeded"
FAILED = "release_command.failed"
ONEOFFS_DIR = "oneoffs"  # in the state: the rows of detached one-offs, until `ingot down` stops them
STARTED, DETACHED, FINISHED = "run.start", "run.detached", "run.finish"  # `ingot run`'s ledger entries
IRREVERSIBLE = "release.irreversible"  # a release marked irreversible by `ingot deploy --irreversible`
TAIL_LINES = 20
KEPT_LINES = 10_000  # of a container one-off's output, kept in its log file
POLL = 0.05
SECRET_MARK = "***"  # what a secret value printed by a one-off command is shown as


@dataclass(frozen=True)
class OneOff:
    """A one-off instance about to start: its request, its runtime, and what its output must not show."""

    request: InstanceRequest
    runtime: str
    secret_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class OneOffResult:
    instance: str
    exit_code: int | None  # None: ended by its deadline (or the engine could not say)
    timed_out: bool
    seconds: float
    log_path: str
    tail: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---- preparing and running one -----------------------------------------------------------------
async def prepare(executor: Executor, environment: str, service: str, release: ReleaseRow, runtime: str,
                  command: list[str], *, purpose: str, attach: bool = False) -> OneOff:
    """The request of a one-off instance of `release` running `command`: the serving instances' template
    (the release is verified against the pinned key first, as for them), its command swapped."""
    from ingot.deploy_params import DeployParams, HealthPolicy

    await asyncio.to_thread(executor.check_release, environment, service, release)
    params = DeployParams(replicas=0, health=HealthPolicy(), listen=("", 0), runtime=runtime)
    template = await executor.request_template(environment, service, release, params)
    instance_id = f"{service}-{release.id[:6]}-{purpose}-{uuid.uuid4().hex[:6]}"
    inherits, fed, on_terminal = _attachment(attach, runtime)
    request = replace(template, instance_id=instance_id, command=tuple(command), state_dir="", oneoff=True,
                      log_path=executor.paths.instance_log(environment, service, instance_id),
                      attach=inherits, stdin=fed, terminal=on_terminal)
    secrets = tuple(template.env[name] for name in release.spec.get("secrets") or () if name in template.env)
    return OneOff(request, runtime, secrets)


def _attachment(attach: bool, runtime: str) -> tuple[bool, bool, bool]:
    """How an attached one-off meets the caller: the process runtime hands it the caller's stdin, stdout
    and stderr (its terminal, if they are one); a container gets a TTY joined to the caller's terminal
    when there is one (as `docker run -it`), else its stdin fed from the caller's and its output streamed
    (as `docker run -i`). (inherits, fed, on a terminal): the request's `attach`, `stdin` and `terminal`."""
    if not attach or runtime == "process":
        return attach, False, False
    on_terminal = terminal.attached_to_terminal()
    return False, not on_terminal, on_terminal


def attached(request: InstanceRequest) -> bool:
    """Whether the one-off runs attached to the caller (then a Ctrl-C of the caller is its command's)."""
    return request.attach or request.stdin or request.terminal


def run(executor: Executor, oneoff: OneOff, *, timeout: float | None,
        on_line: Callable[[str], None] | None = None, stop_timeout: float = 10.0,
        given_up: Callable[[], bool] | None = None) -> OneOffResult:
    """Start the one-off instance, stream its output lines to `on_line` as they are written (secret values
    masked), wait until it exits, `timeout` passes or `given_up()` says so (then it is stopped: an aborted
    deploy's release command), and clean up after it.

    Blocking: the agent calls it in a thread, the CLI directly. Ctrl-C in an attached run is passed on to
    the command, which decides what it means (a REPL goes on)."""
    request, runtime_name = oneoff.request, oneoff.runtime
    runtime = executor.runtimes.get(runtime_name)
    # Secret values never reach the deploy's output or the ledger, even if the command prints them.
    mask = masker(oneoff.secret_values, mark=SECRET_MARK)
    started = time.monotonic()
    try:
        # A container one-off that ends at once is not a failed start (see DockerRuntime.start): its end is
        # observed below, as a process's is.
        row = runtime.start(request)
    except BaseException:
        _cleanup(executor, request)
        raise
    follower = _Follower(Path(request.log_path)) if runtime_name == "process" and not request.attach else None
    streamed = (_Streamed(runtime, row, on_line, mask) if runtime_name != "process" and not request.terminal
                else None)
    if request.stdin:  # a daemon: a caller's stdin that never ends must not hold this process at exit
        threading.Thread(target=_feed, args=(runtime, row), name=f"stdin {row.id}", daemon=True).start()

    def follow() -> None:
        if follower is not None and on_line is not None:
            for line in follower.new_lines():
                on_line(mask(line))

    try:
        with _Joined(runtime, row) if request.terminal else contextlib.nullcontext():
            seen, timed_out = _wait(runtime, request, row, started, timeout, stop_timeout, given_up, follow)
        if follower is not None and on_line is not None:
            _wait_for_logger(follower, on_line, mask)
        shown_directly = request.attach or request.terminal  # the caller saw it all, on its terminal
        tail = [mask(line) for line in runtime.log_tail(row, TAIL_LINES)] if not shown_directly else []
        if streamed is not None:
            # The engine's log goes with the container: what it wrote is kept where a process's would be.
            _keep_log(request, streamed.rest())
        return OneOffResult(row.id, None if timed_out else seen.exit_code, timed_out,
                            round(time.monotonic() - started, 3), str(request.log_path), tail)
    finally:
        runtime.stop(row, stop_timeout)  # a no-op once it exited; never left running if we are interrupted
        _cleanup(executor, request)


def _wait(runtime: Any, request: InstanceRequest, row: Any, started: float, timeout: float | None,
          stop_timeout: float, given_up: Callable[[], bool] | None,
          follow: Callable[[], None]) -> tuple[Any, bool]:
    """Until the one-off has ended (its last observation), or is stopped for its deadline (True) or
    for `given_up()`. A Ctrl-C of the caller meanwhile goes to an attached one's command."""
    while True:
        try:
            seen = runtime.observe(row)
            follow()
            if not seen.alive:
                return seen, False
            late = timeout is not None and time.monotonic() - started > timeout
            if late or (given_up is not None and given_up()):
                runtime.stop(row, stop_timeout)
                return runtime.observe(row), late
            time.sleep(POLL)
        except KeyboardInterrupt:
            if not attached(request):
                raise
            runtime.interrupt(row)


def start_detached(executor: Executor, oneoff: OneOff) -> InstanceRow:
    """Start the one-off instance and leave it running on its own (`ingot run --detach`); its row, kept
    (`remember_detached`) so that `ingot status` lists it and `ingot down` stops it. Its
    checkout stays until it ends: `stop_detached` removes it, and the agent removes checkouts no instance
    runs from as it starts."""
    try:
        row = executor.runtimes.get(oneoff.runtime).start(replace(oneoff.request, attach=False, stdin=False,
                                                                  terminal=False))
    except BaseException:
        _cleanup(executor, oneoff.request)
        raise
    remember_detached(executor.paths, row)
    return row


def remember_detached(paths: StatePaths, row: InstanceRow) -> None:
    """Keep a detached one-off's row where `detached` finds it: a file of its own in the state
    (`oneoffs/<id>.json`), read in time that grows with the one-offs left running, not with the ledger."""
    directory = paths.root / ONEOFFS_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    (directory / f"{row.id}.json").write_text(json.dumps(asdict(row)))


def detached(paths: StatePaths, environment: str | None) -> list[InstanceRow]:
    """The detached one-offs started in `environment` (None: every one) and not stopped by `ingot down`
    yet, as their rows were kept when they started: alive or not, that is for their runtime to say."""
    found = []
    for path in sorted((paths.root / ONEOFFS_DIR).glob("*.json")):
        try:
            row = InstanceRow(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # gone meanwhile, or not a row: nothing to act on
            continue
        if environment is None or row.environment == environment:
            found.append(row)
    return found


def running_detached(paths: StatePaths, runtimes: Runtimes, environment: str | None) -> list[dict[str, Any]]:
    """`ingot status`'s one-offs: the detached ones still running (an engine that cannot be asked: not
    listed, as not known to run)."""
    running = []
    for row in detached(paths, environment):
        with contextlib.suppress(OperationFailed):
            if runtimes.of(row).observe(row).alive:
                running.append({"id": row.id, "environment": row.environment, "service": row.service,
                                "release": row.release_id, "runtime": row.runtime, "pid": row.pid,
                                "started_at": row.started_at, "log": row.log_path})
    return running


def stop_detached(executor: Executor, environment: str | None, actor: str, timeout: float = 10.0) -> list[str]:
    """`ingot down`'s part for detached one-offs of `environment` (None: all): each stopped (a container
    also removed, if it had already exited), its checkout removed, and its end recorded (`FINISHED`, with
    its exit code, and who stopped it if it still ran). The ids of those that were running."""
    stopped = []
    for row in detached(executor.paths, environment):
        runtime = executor.runtimes.of(row)
        seen = runtime.observe(row)
        runtime.stop(row, timeout)
        code = seen.exit_code if not seen.alive else runtime.observe(row).exit_code
        if row.runtime == "process" and row.handle:
            executor.remove_checkout(Path(row.handle))
        ledger.record(executor.store, actor=actor, action=FINISHED, environment=row.environment,
                      service=row.service, subject=row.release_id,
                      payload={"instance": row.id, "detach": True, "exit_code": code,
                               "stopped_by": "down" if seen.alive else None})
        (executor.paths.root / ONEOFFS_DIR / f"{row.id}.json").unlink(missing_ok=True)
        if seen.alive:
            stopped.append(row.id)
    return stopped


class _Joined:
    """A container one-off's TTY joined to the caller's terminal while the block runs: the terminal raw
    (keys, Ctrl-C included, go to the command's TTY), its size passed on now and on every change, the
    container's output written to it as it comes; at the end, what it wrote last, and the terminal back."""

    def __init__(self, runtime: Any, row: Any) -> None:
        self.runtime, self.row = runtime, row
        self.in_fd, self.out_fd = sys.stdin.fileno(), sys.stdout.fileno()
        self.stack = contextlib.ExitStack()
        self.thread = threading.Thread(target=runtime.terminal, args=(row, self.in_fd, self.out_fd),
                                       name=f"tty {row.id}", daemon=True)

    def _resize(self, size: terminal.Size) -> None:
        self.runtime.resize(self.row, *size)

    def __enter__(self) -> _Joined:
        sys.stdout.flush()
        self.stack.enter_context(terminal.raw(self.in_fd))
        self.stack.enter_context(terminal.on_resize(self.out_fd, self._resize))
        size = terminal.size(self.out_fd)
        if size is not None:
            with contextlib.suppress(OperationFailed):  # ended already: nothing to resize
                self._resize(size)
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self.thread.join(timeout=5)  # its output ends with it: the last of it is on the terminal
        finally:
            self.stack.close()


class _Follower:
    """The new complete lines of a log file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]

    def rest(self) -> list[str]:
        lines = self.new_lines()
        if self.partial:
            lines.append(self.partial.decode("utf-8", "replace"))
            self.partial = b""
        return lines


def _feed(runtime: Any, row: Any) -> None:
    with contextlib.suppress(Exception):  # an instance that has already ended reads nothing more
        runtime.feed_stdin(row, sys.stdin.fileno())


class _Streamed:
    """A container one-off's output passed on live, from a thread following the engine's log, and kept
    (its last KEPT_LINES) for the log file. Should following fail, `rest` reads the log once it has ended
    and passes on what was not seen yet."""

    def __init__(self, runtime: Any, row: Any, on_line: Callable[[str], None] | None,
                 mask: Callable[[str], str]) -> None:
        self.runtime, self.row, self.on_line, self.mask = runtime, row, on_line, mask
        self.lines: deque[str] = deque(maxlen=KEPT_LINES)
        self.seen, self.ok = 0, False
        self.thread = threading.Thread(target=self._pump, name=f"log {row.id}", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        with contextlib.suppress(Exception):  # made up for by `rest`
            for raw in self.runtime.follow_log(self.row):
                self._pass(self.mask(raw))
            self.ok = True

    def _pass(self, line: str) -> None:
        self.lines.append(line)
        self.seen += 1
        if self.on_line is not None:
            self.on_line(line)

    def rest(self) -> list[str]:
        """Once the container has ended: every line kept (the stream ends with it; a bounded wait)."""
        self.thread.join(timeout=10)
        if not self.ok or self.thread.is_alive():
            whole = [self.mask(line) for line in self.runtime.log_tail(self.row, KEPT_LINES)]
            missed = whole[self.seen:] if not self.thread.is_alive() else []
            for line in missed:
                self._pass(line)
        return list(self.lines)


def _wait_for_logger(follower: _Follower, on_line: Callable[[str], None], mask: Callable[[str], str]) -> None:
    """The logger process writes what the command wrote last just after it exited: read until it is
    quiet for a moment (bounded), so the output shown is the whole output."""
    quiet_since = time.monotonic()
    deadline = quiet_since + 2.0
    while time.monotonic() < deadline and time.monotonic() - quiet_since < 0.2:
        lines = follower.new_lines()
        if lines:
            quiet_since = time.monotonic()
        for line in lines:
            on_line(mask(line))
        time.sleep(POLL)
    for line in follower.rest():
        on_line(mask(line))


def _keep_log(request: InstanceRequest, lines: list[str]) -> None:
    path = Path(request.log_path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text("".join(f"{line}\n" for line in lines))


def _cleanup(executor: Executor, request: InstanceRequest) -> None:
    if request.artifact_path is not None:
        executor.remove_checkout(request.artifact_path)


# ---- release_command -------------------------------------------------------------------------------
def release_command(release: ReleaseRow) -> list[str] | None:
    command = release.spec.get("release_command")
    return [str(word) for word in command] if command else None


def ran_before(store: Store, environment: str, release: ReleaseRow) -> bool:
    """Whether `release`'s release_command already succeeded in `environment` (a rollback or a repeated
    promotion to it reuses the release, and its migration is done)."""
    return any(e.subject == release.id for e in ledger.entries(store, environment=environment,
                                                               service=release.service, actions=[SUCCEEDED]))


def with_release_command(plan: Plan, store: Store, environment: str, release: ReleaseRow, *,
                         rerun: bool = False) -> Plan:
    """`plan` with a `release_command` step before the first start of `release`, when it has a
    release_command that has not run successfully in `environment` yet (or `rerun`)."""
    if release_command(release) is None or (not rerun and ran_before(store, environment, release)):
        return plan
    return with_release_step(plan, release.id, float(release.spec.get("release_command_timeout") or 600.0))


def with_release_step(plan: Plan, release_id: str, seconds: float) -> Plan:
    """`plan` with a `release_command` step for `release_id` just before its first start, if it has one."""
    first = next((i for i, s in enumerate(plan.steps) if s.kind == "start" and s.release == release_id), None)
    if first is None:
        return plan
    step = Step("release_command", release_id, seconds=seconds)
    return replace(plan, steps=(*plan.steps[:first], step, *plan.steps[first:]))


async def release_phase(executor: Executor, dep: Deployment, step: Step, emit: Emit) -> dict[str, Any]:
    """The `release_command` step: run it, its output streamed to the deploy's caller and kept in its
    log; success is recorded (so that it is not run again for this release), failure raised."""
    command = release_command(dep.release)
    assert command is not None and step.seconds is not None
    env, service = dep.row.environment, dep.row.service
    oneoff = await prepare(executor, env, service, dep.release, dep.params.runtime, command, purpose="release")
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    async def forward() -> None:  # in order, from the loop: the caller sees the lines as they come
        while (line := await lines.get()) is not None:
            await emit({"event": "release_output", "instance": oneoff.request.instance_id, "line": line})

    def on_line(line: str) -> None:
        loop.call_soon_threadsafe(lines.put_nowait, line)

    forwarding = asyncio.create_task(forward())
    aborted = threading.Event()
    # The command runs in a thread, which cancelling cannot stop: an abort tells it to stop the instance,
    # and the step waits for that, so nothing of the aborted release is left running.
    work = asyncio.ensure_future(asyncio.to_thread(
        run, executor, oneoff, timeout=step.seconds, on_line=on_line, stop_timeout=dep.params.stop_timeout,
        given_up=aborted.is_set))
    try:
        result = await dep.control.or_abort(asyncio.shield(work))
    except RolloutAborted as exc:
        aborted.set()
        result = await work
        ledger.record(executor.store, actor=dep.row.actor, action=FAILED, environment=env, service=service,
                      subject=dep.release.id, payload={"deployment": dep.row.id, "command": command,
                                                       **result.as_dict(), "aborted": str(exc)})
        raise
    finally:
        lines.put_nowait(None)
        with contextlib.suppress(Exception):  # a caller gone away does not fail the deploy
            await forwarding
    detail = {"command": command, **result.as_dict()}
    ok = result.exit_code == 0 and not result.timed_out
    ledger.record(executor.store, actor=dep.row.actor, action=SUCCEEDED if ok else FAILED, environment=env,
                  service=service, subject=dep.release.id, payload={"deployment": dep.row.id, **detail})
    if ok:
        return detail
    how = (f"did not finish within release_command_timeout {step.seconds:g}s and was stopped"
           if result.timed_out else f"exited with code {result.exit_code}")
    raise StepFailed(f"release command `{' '.join(command)}` of {dep.release.id} {how}",
                     details=[f"its log: {result.log_path}", *(f"  | {line}" for line in result.tail),
                              "no instance of the new release was started"])


# ---- irreversible releases ---------------------------------------------------------------------------
def is_irreversible(store: Store, environment: str, release: ReleaseRow) -> bool:
    if release.spec.get("irreversible"):
        return True
    return any(e.subject == release.id for e in ledger.entries(store, environment=environment,
                                                               service=release.service, actions=[IRREVERSIBLE]))


def mark_irreversible(store: Store, actor: str, environment: str, release: ReleaseRow) -> None:
    """Record `release` as not safe to roll back past in `environment` (`ingot deploy --irreversible`),
    once: a release already marked (by its spec or an earlier mark) is left as it is."""
    if not is_irreversible(store, environment, release):
        ledger.record(store, actor=actor, action=IRREVERSIBLE, environment=environment, service=release.service,
                      subject=release.id, payload={"by": "ingot deploy --irreversible"})


def irreversible_between(store: Store, environment: str, target: ReleaseRow,
                         history: list[str] | None = None) -> list[ReleaseRow]:
    """The irreversible releases that went live in `environment` after `target` last did (all those
    newer than it, if it never did): a rollback to `target` would run its code on what they changed.
    `history`: the releases that went live, oldest first, where the store's activations do not say it (a
    Kubernetes target's successful rollouts)."""
    if history is None:
        history = [a.release_id for a in store.activation_history(environment, target.service) if a.release_id]
    if target.id in history:
        last = len(history) - 1 - history[::-1].index(target.id)
        later = history[last + 1:]
    else:
        later = [r for r in history if (row := store.get_release(r)) is not None and row.created_at > target.created_at]
    found: dict[str, ReleaseRow] = {}
    for release_id in later:
        row = store.get_release(release_id)
        if row is not None and row.id != target.id and is_irreversible(store, environment, row):
            found.setdefault(row.id, row)
    return list(found.values())


