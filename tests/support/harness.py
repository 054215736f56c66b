"""Helpers for end-to-end tests: a copy of the example project, the real CLI, a load client."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ingot.runtimes import ports

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "hello"
LOAD_CLIENT = Path(__file__).with_name("load_client.py")
# strategy.min_ready for every test project: the example's 3 s (or the 10 s default) would add that much
# to each deploy. Long enough for a few health probes at the example's 200 ms interval, so every deploy
# still goes through a settle.
TEST_MIN_READY = "500ms"
EXAMPLE_STRATEGY = "strategy: {type: blue-green, drain_timeout: 10s, min_ready: 3s}"


# Ports the tests' listeners take: below the instances' range (ingot.runtimes.ports) and the kernel's ephemeral
# range, so neither an instance nor an outgoing connection takes one between the probe and the listener's bind.
# Each xdist worker has a slice of its own, and no port is given twice in a session.
TEST_PORTS = (10000, 19999)
_given_ports: set[int] = set()


def free_port() -> int:
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (TEST_PORTS[1] - TEST_PORTS[0] + 1) // workers
    low = TEST_PORTS[0] + worker * size
    for port in random.sample(range(low, low + size), size):
        if port not in _given_ports and ports.is_free(port):
            _given_ports.add(port)
            return port
    raise RuntimeError(f"no free test port in {low}-{low + size - 1}")


def poll(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = condition()
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}; last value {last!r}")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class ExampleProject:
    root: Path
    port: int
    # Extra environment for every command, and so for the agent the first one starts
    # (INGOT_HEAL_INTERVAL, say).
    env: dict[str, str] = field(default_factory=dict)
    min_ready: str = TEST_MIN_READY  # what `use_strategy` gives a strategy that does not set its own

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    _project: str | None = field(default=None, repr=False)

    @property
    def project(self) -> str:
        """The spec's project (read once: a test may break the spec later)."""
        if self._project is None:
            found = re.search(r"^project:\s*(\S+)", (self.root / "ingot.yaml").read_text(), flags=re.M)
            assert found, f"no project: line in {self.root / 'ingot.yaml'}"
            self._project = found.group(1)
        return self._project

    @property
    def state(self) -> Path:
        """The project's state directory: $INGOT_HOME when a test sets it, else `.ingot/<project>/` beside the spec."""
        home = self.env.get("INGOT_HOME")
        return Path(home) if home else self.root / ".ingot" / self.project

    @property
    def runs(self) -> Path:
        """Where its process instances' checkouts are (outside the state directory when run as root)."""
        from ingot.paths import StatePaths

        return StatePaths(self.state.resolve()).runs

    def ingot(self, *args: str, timeout: float = 180.0, check: bool = False,
              extra_env: dict[str, str] | None = None) -> Result:
        env = {**os.environ, "INGOT_ACTOR": "tester@ci", "COLUMNS": "200"}
        env.pop("INGOT_HOME", None)
        env.update(self.env)
        env.update(extra_env or {})
        proc = subprocess.run([sys.executable, "-m", "ingot", *args], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=timeout)
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and result.code != 0:
            raise AssertionError(f"ingot {' '.join(args)} exited {result.code}\n{result.out}\n{result.err}")
        return result

    def set_version(self, version: str) -> None:
        app = self.root / "app.py"
        app.write_text(re.sub(r'^VERSION = ".*"$', f'VERSION = "{version}"', app.read_text(), flags=re.M))

    def get(self) -> dict[str, Any]:
        response = httpx.get(self.url, timeout=5, trust_env=False)
        response.raise_for_status()
        return dict(response.json())


def make_example(tmp: Path, *, replicas: int = 2, extra_service_yaml: str = "",
                 min_ready: str = TEST_MIN_READY) -> ExampleProject:
    root = tmp / "hello"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".ingot", "__pycache__"))
    port = free_port()
    spec = (root / "ingot.yaml").read_text()
    spec = spec.replace('listen: "127.0.0.1:8080"', f'listen: "127.0.0.1:{port}"')
    spec = spec.replace('listen: "127.0.0.1:9080"', f'listen: "127.0.0.1:{free_port()}"')
    spec = spec.replace("replicas: 2", f"replicas: {replicas}")
    spec = spec.replace(EXAMPLE_STRATEGY, with_min_ready(EXAMPLE_STRATEGY, min_ready) + extra_service_yaml)
    (root / "ingot.yaml").write_text(spec)
    return ExampleProject(root, port, min_ready=min_ready, _project="hello")


def with_min_ready(strategy: str, min_ready: str) -> str:
    """A `strategy: {...}` line with `min_ready` in place of the example's, or added when it sets none
    (a test strategy that sets its own keeps it)."""
    if strategy.strip() == EXAMPLE_STRATEGY:
        return strategy.replace("min_ready: 3s", f"min_ready: {min_ready}")
    if "min_ready" in strategy:
        return strategy
    assert "strategy: {" in strategy, f"expected a flow-style strategy line, got {strategy!r}"
    return strategy.replace("strategy: {", f"strategy: {{min_ready: {min_ready}, ", 1)


def make_container_example(tmp: Path, *, replicas: int = 2, extra_service_yaml: str = "",
                           min_ready: str = TEST_MIN_READY) -> ExampleProject:
    """The example's container flavour, as `ingot.yaml`, under a project name of its own."""
    root = tmp / "hello"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".ingot", "__pycache__"))
    port = free_port()
    spec = (root / "ingot.container.yaml").read_text()
    spec = spec.replace("project: hello-container", f"project: hc-{os.urandom(4).hex()}")
    spec = spec.replace('listen: "127.0.0.1:8090"', f'listen: "127.0.0.1:{port}"')
    spec = spec.replace('listen: "127.0.0.1:9090"', f'listen: "127.0.0.1:{free_port()}"')
    spec = spec.replace("replicas: 2", f"replicas: {replicas}")
    spec = spec.replace(EXAMPLE_STRATEGY, with_min_ready(EXAMPLE_STRATEGY, min_ready))
    spec = spec.replace("    stop_timeout: 5s\n", "    stop_timeout: 5s\n" + extra_service_yaml)
    (root / "ingot.yaml").write_text(spec)
    return ExampleProject(root, port, min_ready=min_ready)


@contextlib.contextmanager
def load(url: str, tmp: Path, connections: int = 4) -> Iterator[dict[str, Any]]:
    """Run the load client in a separate process for the duration of the block; yields its report."""
    stop = tmp / f"stop-{time.monotonic_ns()}"
    out = tmp / f"load-{time.monotonic_ns()}.json"
    proc = subprocess.Popen([sys.executable, str(LOAD_CLIENT), url, str(stop), str(out), str(connections)])
    report: dict[str, Any] = {}
    try:
        poll(lambda: Path(str(out) + ".ready").exists(), timeout=20, what="load client start")
        time.sleep(0.3)  # let it reach a steady rate before the operation under test begins
        yield report
    finally:
        stop.write_text("stop")
        proc.wait(timeout=30)
        report.update(json.loads(out.read_text()))


def interrupt(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[str, str]:
    """Ctrl-C (SIGINT) to a running command, then its stdout and stderr once it has ended (killed if it has not
    within `timeout`, and the test then fails on its exit code)."""
    try:
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def kill_pidfile(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_edge(home: Path) -> None:
    """Stop an edge and its supervisor (the supervisor first, so that it does not start the edge again),
    and any haproxy of that home still running (haproxy outlives a killed edge, for the next to adopt)."""
    from ingot.routers.haproxy import running_master

    kill_pidfile(home / "supervisor.pid")
    with contextlib.suppress(OSError, ValueError):
        pid = int((home / "edge.pid").read_text().strip())
        os.kill(pid, signal.SIGTERM)
        # Gone, not just its pidfile let go: the process holds its listeners until it has exited.
        poll(lambda: not _alive(pid), timeout=10, what="the edge to stop")
    kill_pidfile(home / "edge.pid")
    with contextlib.suppress(OSError):
        for workdir in (home / "haproxy").iterdir():
            master = running_master(workdir)
            if master is not None:
                with contextlib.suppress(OSError):
                    os.killpg(master, signal.SIGKILL)


def stop_everything(project: ExampleProject) -> None:
    """Leave nothing running after a test, whatever state it failed in (even with a broken agent)."""
    project.ingot("down", timeout=60)
    kill_pidfile(project.state / "supervisor.pid")
    kill_pidfile(project.state / "agent.pid")
    db = project.state / "state.db"
    if not db.exists():
        return
    import sqlite3

    pids = []
    with contextlib.suppress(sqlite3.DatabaseError), contextlib.closing(sqlite3.connect(db)) as conn:
        pids = [row[0] for row in conn.execute("SELECT pid FROM instances WHERE pid IS NOT NULL")]
    for pid in pids:
        # Only a process that still runs from this project's artifact store is ours to kill.
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/cwd").startswith((str(project.state), str(project.runs))):
                os.killpg(pid, signal.SIGKILL)
    for pid, _what in processes_of(project.state):  # whatever no record names (a test's fault did that)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def processes_of(state: Path) -> list[tuple[int, str]]:
    """Every live process that belongs to the ingot of `state`: instances (INGOT_STATE in their environment)
    and anything naming the state directory on its command line (the agent, instance loggers, haproxy)."""
    found = []
    marker = str(state.resolve()).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            if b"INGOT_STATE=" + marker + b"\0" in environ + b"\0" or marker in cmdline:
                found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def manual_repair(example: ExampleProject) -> None:
    """Turn the agent's self-healing off, for tests that inject drift and repair it with `ingot reconcile`."""
    example.env["INGOT_HEAL_INTERVAL"] = "0"


def use_strategy(example: ExampleProject, strategy: str) -> None:
    """Replace the example's strategy line (keeping the project's short min_ready unless `strategy` sets one)."""
    spec = example.root / "ingot.yaml"
    current = f"    {with_min_ready(EXAMPLE_STRATEGY, example.min_ready)}"
    assert current in spec.read_text(), "use_strategy expects the example's strategy line"
    spec.write_text(spec.read_text().replace(current, with_min_ready(strategy.lstrip("\n"), example.min_ready)))


def break_app(example: ExampleProject, body: str) -> None:
    app = example.root / "app.py"
    app.write_text(app.read_text().replace(
        '        body = {\n            "greeting"', f"        {body}\n        body = {{\n            \"greeting\""))


HEALTHY_ANSWER = '            self._send(200, b"ok\\n", "text/plain")\n            return\n'


def answer_health_with(example: ExampleProject, status: int, body: str, *, printing: str = "") -> None:
    """Make the app's /healthz answer `status` with `body`, first printing `printing` (a Python expression,
    e.g. `"db down", os.environ["X"]`) to its log when given."""
    app = example.root / "app.py"
    source = app.read_text()
    healthy = 'if self.path == "/healthz":\n            self._send(200, b"ok\\n", "text/plain")'
    assert healthy in source
    said = f"print({printing}, flush=True)\n            " if printing else ""
    app.write_text(source.replace(healthy, f'if self.path == "/healthz":\n            {said}'
                                           f'self._send({status}, {(body + chr(10)).encode()!r}, "text/plain")'))


WRITES = "        self.end_headers()\n        self.wfile.write(body)\n"
WRITES_LOCKED = "        with WRITING:\n            self.end_headers()\n            self.wfile.write(body)\n"
MAIN = "def main() -> None:"


def exit_after_first_health_check(example: ExampleProject, seconds: float, stagger: Path | None = None) -> None:
    """Each instance passes its health gate, then exits (code 3, after printing "giving up") `seconds`
    after its first health check. With `stagger` (a directory), the instances exit one second apart in
    the order they were first probed, as instances of a bad release rarely die in the same millisecond.
    They exit between two responses, never in the middle of one: a response cut halfway is lost on any
    router (its head is already with the client), which is not what the tests of this prove."""
    app = example.root / "app.py"
    source = app.read_text()
    assert HEALTHY_ANSWER in source and WRITES in source and MAIN in source
    app.write_text(source.replace(WRITES, WRITES_LOCKED).replace(MAIN, "WRITING = threading.Lock()\n\n\n" + MAIN))
    order = ""
    if stagger is not None:
        stagger.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # instances run as users of their own: somewhere they all can reach and write
            stagger = Path(tempfile.mkdtemp(prefix="ingot-test-order-"))
            stagger.chmod(0o1777)
        order = (f'                for rank in range(1000):\n'
                 f'                    try:\n'
                 f'                        os.close(os.open(os.path.join({str(stagger)!r}, str(rank)), '
                 f'os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n'
                 f'                        break\n'
                 f'                    except FileExistsError:\n'
                 f'                        pass\n'
                 f'                delay += rank\n')
    app.write_text(app.read_text().replace(HEALTHY_ANSWER, (
        '            self._send(200, b"ok\\n", "text/plain")\n'
        '            if not getattr(Handler, "doomed", False):\n'
        '                Handler.doomed = True\n'
        f'                delay = {seconds!r}\n'
        f'{order}'
        '                threading.Timer(delay, lambda: (WRITING.acquire(), print("giving up", flush=True), '
        'os._exit(3))).start()\n'
        '            return\n')))


def lock_of(example: ExampleProject) -> Any:
    """The staging environment's deploy lock as the store holds it (a `locks.LockInfo`), or None."""
    from ingot import locks
    from ingot.store import Store

    store = Store(example.state)
    try:
        return locks.current(store, "staging")
    finally:
        store.close()
