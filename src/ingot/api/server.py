"""`ingot serve`: the agent in the foreground with the HTTP API and the dashboard in its event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from ingot.agent.client import AgentClient, AgentUnavailable, agent_pid, wait_for_exit
from ingot.agent.server import Agent, Companion, run_agent
from ingot.api.app import ProjectSource, create_app
from ingot.api.guard import MAX_BODY_DEFAULT, Backoff
from ingot.errors import UserInputError
from ingot.gitops import PollResult, Watcher

log = logging.getLogger("ingot.serve")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside the agent's loop: the agent owns the signals and says when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class ServeOptions:
    """How the API faces its clients: TLS files, the body cap, the failed-authentication backoff."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body: int = MAX_BODY_DEFAULT
    backoff: Backoff = field(default_factory=Backoff)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def check_tls(cert: Path | None, key: Path | None) -> None:
    """Load the pair once before anything starts, so a wrong file is a clear error, not a dying server."""
    if (cert is None) != (key is None):
        raise UserInputError("--tls-cert and --tls-key go together: give both (PEM files) or neither")
    if cert is None or key is None:
        return
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise UserInputError(f"{flag} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise UserInputError(f"--tls-cert {cert} / --tls-key {key}: not a usable certificate and key ({exc})",
                             details=["expected PEM files: the certificate (chain) and its private key"]) from None


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (a name counts if everything it resolves to is loopback)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in found)


def bind(listen: tuple[str, int]) -> socket.socket:
    """Bind before anything starts, so a taken address is an error at once, not a dying server later."""
    host, port = listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserInputError(f"--listen {host}:{port}: cannot listen there: {exc.strerror}") from exc
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def take_over_from_background_agent(source: ProjectSource) -> int | None:
    """An agent started on demand for this state directory hands over: it stops (its instances keep
    serving) and this process adopts them. Returns its pid, if there was one."""
    pid = agent_pid(source.paths)
    if pid is None:
        return None
    with contextlib.suppress(AgentUnavailable):
        AgentClient(source.paths).call("shutdown", timeout=10)
    wait_for_exit(source.paths, 30, pid=pid)
    return pid


def watching(watcher: Watcher) -> Companion:
    """The GitOps watcher beside the agent, in a thread of its own: its deploys go through the agent's
    socket like any client's, and it stops between polls when the agent stops."""
    async def run(_agent: Agent) -> None:
        stop = threading.Event()
        try:
            await asyncio.to_thread(watcher.run, stop, _log_poll)
        finally:
            stop.set()
    return run


def _log_poll(result: PollResult) -> None:
    if result.outcome not in ("unchanged", "pinned"):
        log.info("watch %s: %s %s: %s", result.environment, result.outcome, (result.commit or "")[:10],
                 result.message)


def serve(spec_file: Path, state_dir: Path | None, listen: tuple[str, int],
          watchers: Sequence[Watcher] = (), options: ServeOptions | None = None) -> None:
    options = options or ServeOptions()
    source = ProjectSource(spec_file, state_dir)
    sock = bind(listen)
    app = create_app(source, max_body=options.max_body, backoff=options.backoff)
    tls: dict[str, str] = {}
    if options.tls_cert is not None and options.tls_key is not None:
        tls = {"ssl_certfile": str(options.tls_cert), "ssl_keyfile": str(options.tls_key)}
    # A request head must be whole within uvicorn's keep-alive timeout, and idle connections go after it;
    # `limit_concurrency` answers 503 past that many connections and tasks, which bounds what slow or
    # delayed clients can hold.
    # proxy_headers off: uvicorn would believe X-Forwarded-For from 127.0.0.1, which every instance and build
    # on the machine is, and the failed-authentication backoff and log go by the client's address.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=10,
                            limit_concurrency=1024, proxy_headers=False, **tls)  # type: ignore[arg-type]
    server = _EmbeddedServer(config)

    async def api(_agent: Agent) -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            server.should_exit = True

    take_over_from_background_agent(source)
    run_agent(source.paths, companions=[api, *(watching(w) for w in watchers)])
