"""The fast path of the `ingot` command: `--version`, `status`, `history`, `logs`, `drift` and a no-change
`deploy` without loading the CLI.

Importing the full CLI (Typer, SQLAlchemy, the spec's pydantic models, the build and config modules)
costs far more than these commands' work. The agent already has all of that loaded and the project's
state open, so for these read-only commands this module, with nothing but the standard library and
ingot's path rules, asks the running agent over its socket (op `cli`, see ingot.agent.cli_answers), which
runs the same operation and renders the same text (ingot.views) onto a console behaving as this
process's stdout and stderr would, and prints what it answers. Lazy imports alone could not get there:
parsing the spec with its models and opening the store are themselves most of the cost.

It is deliberately narrow. It recognises only these commands with the options it fully understands,
spelled as the full CLI defines them (cli/main.py): anything else (another command or option, a repeated
or empty option, `--help`, `--server`/INGOT_SERVER, a spec whose `project:` line it cannot read, a legacy
state layout) goes to the full CLI unchanged, and so does everything when no agent answers or the agent
declines (an error, which the full CLI reports its own way; another state; another time zone), and when
INGOT_DATABASE_URL names a shared store (the agent may have been started with another). So the
output is the full CLI's by construction, byte for byte, only sooner. INGOT_FAST_PATH=0 turns it off.

`ingot deploy` is answered here only when it would change nothing (ingot.deploy_check): the agent says so
and records what the full CLI records for it; any deploy that would act is the full CLI's, unchanged.

Ctrl-C before a command has started anything (while this or the full CLI is importing, parsing, asking)
ends the command quietly with 130, the shell's code for SIGINT, instead of a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
from typing import Any, NoReturn

# Options taking a value, by command; for each, the names it may be given by, as the full CLI defines
# them. `logs` takes `--file` only in its long form: `-f` is the usual spelling of a follow flag.
_GLOBAL = {"file": ("--file", "-f"), "env": ("--env", "-e"), "state": ("--state",)}
_COMMANDS: dict[str, dict[str, tuple[str, ...]]] = {
    "status": {"file": ("--file", "-f"), "env": ("--env", "-e")},
    "history": {"file": ("--file", "-f"), "env": ("--env", "-e"), "service": ("--service", "-s"),
                "limit": ("--limit",)},
    "logs": {"file": ("--file",), "env": ("--env", "-e"), "lines": ("--lines", "-n")},
    "deploy": {"file": ("--file", "-f"), "env": ("--env", "-e"), "service": ("--service", "-s")},
    "drift": {"file": ("--file", "-f"), "env": ("--env", "-e")},
}
# `deploy --irreversible` records that it was given: the full CLI's.
_FLAGS = {"status": ("--json",), "history": ("--json",), "logs": (), "deploy": ("--json",), "drift": ("--json",)}
_POSITIONALS = {"status": 0, "history": 0, "logs": 1, "deploy": 0, "drift": 0}
_INTEGERS = ("limit", "lines")
_DEFAULTS: dict[str, dict[str, Any]] = {"history": {"limit": 30}, "logs": {"lines": 50}}
_PROJECT_LINE = re.compile(r"""^project:[ \t]*(["']?)([A-Za-z0-9][A-Za-z0-9_.-]*)\1[ \t]*(#.*)?$""", re.M)
OFF_ENV = "INGOT_FAST_PATH"  # "0": always the full CLI (to compare the two, or to rule this out)
STATUS_TIMEOUT = 10.0  # as the full CLI's own status call to the agent
INTERRUPTED_EXIT = 130  # Ctrl-C: the shell's code for "ended by SIGINT"
_MAX_SOCKET_PATH = 100  # as ingot.paths's (tests/unit/test_cli_fast.py checks the two agree)


class _Declined(Exception):
    """Not for the fast path: the full CLI runs instead."""


def main() -> None:
    """The `ingot` command: the fast path when it can answer, else the full CLI."""
    try:
        try:
            code = try_fast(sys.argv[1:])
            if code is not None:
                sys.exit(code)
            from ingot.cli.main import run
        except KeyboardInterrupt:
            interrupted()
        run()
    finally:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not one ignored by the caller (`&`)
            signal.signal(signal.SIGINT, _ended)


def _ended(_signum: int, _frame: object) -> None:
    """Ctrl-C once the command has ended, while Python finishes (joining worker threads, atexit): the default
    handler would raise KeyboardInterrupt there, which Python prints as an ignored exception's traceback.
    What was printed is flushed; the exit code is the shell's for SIGINT."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream: nothing more can be said on it
            stream.flush()
    os._exit(INTERRUPTED_EXIT)


def interrupted() -> NoReturn:
    """Ctrl-C before anything started: no traceback, the shell's exit code for SIGINT. The fast path's
    requests change nothing until the agent has answered them, and the agent finishes what it answers."""
    os._exit(INTERRUPTED_EXIT)  # not sys.exit: a second Ctrl-C while exiting would print a traceback


def try_fast(argv: list[str]) -> int | None:
    """Answer `argv` on the fast path and return the exit code, or None for the full CLI to run it."""
    if os.environ.get(OFF_ENV) == "0":
        return None
    if argv == ["--version"]:
        from ingot import __version__

        sys.stdout.write(f"ingot {__version__}\n")
        return 0
    if os.environ.get("INGOT_SERVER") or os.environ.get("INGOT_DATABASE_URL"):
        return None  # (a shared store: the agent may have been started with another one)
    os.umask(0o077)  # as the full CLI (ingot.paths.private_umask), should anything be made on the way
    try:
        command, options = _parse(argv)
        request = _request(command, options)
        answer = _ask(request)
    except (_Declined, OSError, ValueError):
        return None
    if not answer.get("ok") or not answer.get("served"):
        return None
    for fd, text in answer["output"]:
        (sys.stdout if fd == 1 else sys.stderr).write(text)
    return int(answer.get("code") or 0)


def _parse(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """The command and its options ("global" ones given before it kept apart), as the full CLI reads them."""
    options: dict[str, Any] = {"global": {}}
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        index = _option(argv, index, _GLOBAL, (), options["global"])
    if index >= len(argv) or argv[index] not in _COMMANDS:
        raise _Declined
    command = argv[index]
    positionals: list[str] = []
    index += 1
    while index < len(argv):
        if argv[index].startswith("-") and argv[index] != "-":
            index = _option(argv, index, _COMMANDS[command], _FLAGS[command], options)
        else:
            positionals.append(argv[index])
            index += 1
    if len(positionals) != _POSITIONALS[command]:
        raise _Declined
    if positionals:
        options["service"] = positionals[0]
    for name, default in _DEFAULTS.get(command, {}).items():
        options.setdefault(name, default)
    return command, options


def _option(argv: list[str], index: int, valued: dict[str, tuple[str, ...]], flags: tuple[str, ...],
            into: dict[str, Any]) -> int:
    """Read the option at `argv[index]` into `into`; the index after it."""
    word = argv[index]
    if word in flags:
        if word in into:
            raise _Declined
        into[word] = True
        return index + 1
    spelled, _, inline = word.partition("=")
    for name, spellings in valued.items():
        if spelled not in spellings or (inline and not spelled.startswith("--")):
            continue
        if name in into:
            raise _Declined  # given twice: the full CLI's rules apply
        if not inline:
            if index + 1 >= len(argv):
                raise _Declined
            inline, index = argv[index + 1], index + 1
        if not inline or (name in _INTEGERS and not inline.isdigit()):
            raise _Declined
        into[name] = int(inline) if name in _INTEGERS else inline
        return index + 1
    raise _Declined


def _request(command: str, options: dict[str, Any]) -> dict[str, Any]:
    """The agent's `cli` request, with the spec and state resolved here, as the full CLI would."""
    given = options["global"]
    spec = os.path.abspath(options.get("file") or given.get("file") or os.environ.get("INGOT_FILE") or "ingot.yaml")
    state = given.get("state") or os.environ.get("INGOT_HOME") or None
    state = os.path.realpath(state) if state else None
    request: dict[str, Any] = {
        "op": "cli", "command": command, "spec": spec, "state": state,
        "env": options.get("env") or given.get("env"), "json": bool(options.get("--json")),
        "service": options.get("service"), "limit": options.get("limit"), "lines": options.get("lines"),
        "tz": os.environ.get("TZ"), "terminal": _terminal(), "root": state or _default_root(spec),
    }
    if command == "deploy":
        from ingot.actor import current_actor
        from ingot.agent.protocol import deploy_environ

        # What the agent needs to act as this process would have: who it is, its interpreter, its settings.
        request.update(actor=current_actor(), python=sys.executable, environ=deploy_environ(dict(os.environ)))
    return request


def _default_root(spec: str) -> str:
    """`.ingot/<project>` beside the spec (ingot.state_layout), when its `project:` line says plainly which
    project; the agent checks it against the spec it parses. A legacy shared `.ingot/` is the full CLI's."""
    with open(spec, encoding="utf-8") as handle:
        found = _PROJECT_LINE.findall(handle.read())
    if len(found) != 1:
        raise _Declined
    base = os.path.join(os.path.dirname(os.path.realpath(spec)), ".ingot")
    own = os.path.join(base, found[0][1])
    if os.path.exists(os.path.join(base, "state.db")) and not os.path.exists(os.path.join(own, "state.db")):
        raise _Declined
    return own


def _terminal() -> dict[str, Any]:
    """What rich would find out about this process's output (see ingot.agent.cli_answers)."""
    from ingot.agent.protocol import TERMINAL_ENVIRON

    size = None
    for fd in (0, 1, 2):  # as rich looks for a terminal's size
        try:
            size = list(os.get_terminal_size(fd))
            break
        except (AttributeError, ValueError, OSError):
            pass
    return {"stdout_tty": sys.stdout.isatty(), "stderr_tty": sys.stderr.isatty(), "size": size,
            "encoding": sys.stdout.encoding, "environ": {k: os.environ[k] for k in TERMINAL_ENVIRON if k in os.environ}}


def _socket_path(root: str) -> str:
    """The agent's socket: `agent.sock` in the state, when that path fits (ingot.paths has the rule and the
    fallback; importing it, with its dataclasses, costs more than the rest of this path)."""
    preferred = os.path.join(root, "agent.sock")
    if len(preferred) <= _MAX_SOCKET_PATH:
        return preferred
    from pathlib import Path

    from ingot.paths import StatePaths

    return str(StatePaths(Path(root)).agent_socket)


def _ask(request: dict[str, Any]) -> dict[str, Any]:
    from ingot.agent.protocol import decode, encode

    root = request.pop("root")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(STATUS_TIMEOUT)
        sock.connect(_socket_path(root))
        sock.sendall(encode(request))
        with sock.makefile("rb") as reader:
            for line in reader:
                message = decode(line)
                if message.get("done"):
                    return message
    raise _Declined
