"""The FastAPI app: read endpoints, actions, metrics and the dashboard, behind bearer tokens.

Every endpoint but `/healthz`, the dashboard's static shell, `/docs` and `/openapi.json` needs a token, checked
with its scope by `ingot.api.guard` before the request's body is read (reads need `read`, actions `deploy`);
the token's name is the actor recorded for what the request does. Handlers are plain
functions (FastAPI runs them in its thread pool) because the service functions they call block: they
talk to the agent over its local socket, and the agent runs in this same process's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict
from swagger_ui_bundle import swagger_ui_path

from ingot import __version__, locks, operations, views
from ingot.actor import current_actor
from ingot.api.guard import MAX_BODY_DEFAULT, Backoff, Guard
from ingot.api.metrics import render_metrics
from ingot.api.tasks import FINAL, Operation, Operations, sse
from ingot.errors import IngotError, UserInputError
from ingot.machine import refuse_if_elsewhere
from ingot.operations import OnEvent, OnOutput
from ingot.project import Project, open_project
from ingot.store import Store

STATIC = Path(__file__).parent / "static"
# The dashboard runs only its own files: no inline script or style, nothing from elsewhere, no framing. A value
# from the API that carries markup stays text even if some code path forgot to (it uses textContent throughout).
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# Only for the OpenAPI document (its security scheme, Swagger UI's "Authorize"): `Guard` does the checking.
_bearer = HTTPBearer(auto_error=False)
# Swagger UI's own files, from the swagger-ui-bundle package: /docs loads nothing from elsewhere.
SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
_PUBLIC = frozenset({"/", "/healthz", "/docs", "/openapi.json"})


def is_public(path: str) -> bool:
    return path in _PUBLIC or path.startswith(("/static/", "/docs/"))


class ProjectSource:
    """The project as of now: the spec is read again for every request (it may have changed on disk,
    e.g. pulled by GitOps), while the store is opened once for the server's life."""

    def __init__(self, spec_file: Path, state_dir: Path | None) -> None:
        self.spec_file = spec_file
        self.state_dir = state_dir
        first = open_project(spec_file, state_dir)
        self.paths = first.paths
        self.store: Store = first.store

    def __call__(self) -> Project:
        project = open_project(self.spec_file, self.state_dir)
        project.__dict__["store"] = self.store  # share the open store instead of opening one per request
        return project


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeployBody(_Body):
    environment: str | None = None
    service: str | None = None
    irreversible: bool = False  # mark the releases deployed as not safe to roll back past


class RollbackBody(_Body):
    environment: str | None = None
    service: str | None = None
    to: str | None = None
    force: bool = False  # past a release marked irreversible (recorded in the ledger)
    rerun_release_command: bool = False


class PromoteBody(_Body):
    source: str
    target: str
    service: str | None = None
    force: bool = False
    rerun_release_command: bool = False


class RestartBody(_Body):
    environment: str | None = None
    service: str
    batch: int | None = None  # instances replaced at a time (default: the strategy's max_surge)


class ScaleBody(_Body):
    environment: str | None = None
    service: str
    replicas: int
    batch: int | None = None  # instances started at a time (default 10)


class ControlBody(_Body):
    environment: str | None = None
    service: str | None = None


async def follow(op: Operation, after: int) -> AsyncIterator[str]:
    """The operation's events after `after` as they come, until its final one; a comment line every
    15 s keeps proxies from closing a quiet stream (a health gate can take a minute)."""
    seq, quiet = after, 0.0
    while True:
        events = op.since(seq)
        for event in events:
            yield sse(event)
            if event.get("event") == FINAL:
                return
        if events:
            seq, quiet = events[-1]["seq"], 0.0
        elif quiet >= 15:
            yield ": still running\n\n"
            quiet = 0.0
        await asyncio.sleep(0.1)
        quiet += 0.1


def create_app(source: ProjectSource, *, max_body: int = MAX_BODY_DEFAULT, backoff: Backoff | None = None) -> FastAPI:
    app = FastAPI(title="ingot", version=__version__, docs_url=None, redoc_url=None,
                  description="Immutable releases, progressive delivery, rollback and an audit ledger.")
    # Outermost but for uvicorn: nothing of the request's body is read before it has passed.
    app.add_middleware(Guard, keys_dir=source.paths.keys, public=is_public, max_body=max_body, backoff=backoff)

    @app.exception_handler(IngotError)
    def _ingot_error(_request: Request, exc: IngotError) -> JSONResponse:
        status = 400 if exc.exit_code == 2 else 409
        return JSONResponse({"error": exc.message, "details": exc.details, "exit_code": exc.exit_code},
                            status_code=status)

    Auth = Depends(_bearer)
    ops = Operations(source.paths.root / "operations", source.store)
    api = "/api/v1"

    # ---- reads -------------------------------------------------------------------------
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get(f"{api}/environments", dependencies=[Auth])
    def environments() -> dict[str, Any]:
        project = source()
        return {"project": project.spec.project, "environments": project.spec.environment_names,
                "default": project.spec.default_environment, "services": list(project.spec.services)}

    @app.get(f"{api}/services", dependencies=[Auth])
    def services(environment: str | None = None) -> dict[str, Any]:
        project = source()
        env = project.environment(environment) if environment else None
        return operations.status(project, env)

    @app.get(f"{api}/instances", dependencies=[Auth])
    def instances(environment: str | None = None) -> list[dict[str, Any]]:
        project = source()
        report = operations.status(project, project.environment(environment) if environment else None)
        return [{"environment": s["environment"], "service": s["service"], **i}
                for s in report["services"] for i in s["instances"]]

    @app.get(f"{api}/releases", dependencies=[Auth])
    def releases(service: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        return views.releases(source(), service, limit)

    @app.get(f"{api}/deployments", dependencies=[Auth])
    def deployments(environment: str | None = None, service: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        project = source()
        return operations.history(project, project.environment(environment), service, limit)

    @app.get(f"{api}/deployments/{{deployment_id}}", dependencies=[Auth])
    def deployment(deployment_id: str) -> dict[str, Any]:
        found = views.deployment(source(), deployment_id)
        if found is None:
            raise HTTPException(404, f"no deployment {deployment_id}")
        return found

    @app.get(f"{api}/rollouts", dependencies=[Auth])
    def rollouts(environment: str | None = None) -> list[dict[str, Any]]:
        project = source()
        report = operations.status(project, project.environment(environment) if environment else None)
        return views.rollouts(project, report["services"])

    @app.get(f"{api}/overview", dependencies=[Auth])
    def overview(environment: str | None = None) -> dict[str, Any]:
        """`/services` and `/rollouts` of one environment from a single agent status report (the dashboard's
        one-second refresh)."""
        project = source()
        return views.overview(project, project.environment(environment))

    @app.get(f"{api}/drift", dependencies=[Auth])
    def drift(environment: str | None = None) -> list[dict[str, Any]]:
        project = source()
        return operations.drift(project, project.environment(environment) if environment else None)

    @app.get(f"{api}/ledger", dependencies=[Auth])
    def ledger_page(after: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    tail: bool = False, before: Annotated[int | None, Query(ge=1)] = None,
                    environment: str | None = None, service: str | None = None) -> dict[str, Any]:
        """Entries in order of `seq`, `limit` per page from `after`; with `tail`, the last `limit`; with
        `before`, the last `limit` older than that `seq` (paging back from the end)."""
        return views.ledger_page(source.store, after=after, limit=limit, tail=tail, before=before,
                                 environment=environment, service=service)

    @app.get(f"{api}/ledger/verify", dependencies=[Auth])
    def ledger_verify() -> dict[str, Any]:
        report = operations.audit_verify(source())
        return {"ok": report.ok, "entries_checked": report.entries_checked,
                "releases_checked": report.releases_checked, "problems": report.problems}

    @app.get("/metrics", dependencies=[Auth], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        body, content_type = render_metrics(source())
        return PlainTextResponse(body, media_type=content_type)

    # ---- actions -----------------------------------------------------------------------
    def started(op: Operation) -> JSONResponse:
        where = f"{api}/operations/{op.id}"
        return JSONResponse({**op.summary(), "url": where, "events": f"{where}/events"}, status_code=202,
                            headers={"Location": where})

    # Deploy, rollback and promote answer 202 with an operation at once (they take minutes): bad input is
    # still refused here with 400, before anything starts.
    @app.post(f"{api}/deploy", dependencies=[Auth], status_code=202)
    def deploy(body: DeployBody) -> JSONResponse:
        project = source()
        env = project.environment(body.environment)
        names = project.services(body.service)
        locks.refuse_if_busy(project.store, env)  # 409 now rather than an operation that fails at once
        refuse_if_elsewhere(project.store, env, "deploy")  # 400 now: another machine's agent owns what runs
        return started(ops.start("deploy", env, names, current_actor(), lambda on_event, on_output: operations.deploy(
            project, env, names, on_event=on_event, on_output=on_output, irreversible=body.irreversible)))

    @app.post(f"{api}/rollback", dependencies=[Auth], status_code=202)
    def rollback(body: RollbackBody) -> JSONResponse:
        project = source()
        env = project.environment(body.environment)
        names = project.services(body.service)
        if body.to and len(names) > 1:
            raise UserInputError("'to' needs 'service' when the spec has several services")
        locks.refuse_if_busy(project.store, env)
        refuse_if_elsewhere(project.store, env, "rollback")
        for name in names:  # as operations.rollback does: a bad target is refused at once, so is one past an
            # irreversible release unless forced (checked again under the lock, where --force is recorded)
            target = operations.rollback_target(project, env, name, body.to)
            if not body.force:
                operations.check_reversible(project, env, name, target, force=False)

        def work(on_event: OnEvent, _on_output: OnOutput) -> list[operations.DeployOutcome]:
            return [operations.rollback(project, env, name, body.to, on_event=on_event, force=body.force,
                                        rerun_release_command=body.rerun_release_command) for name in names]
        return started(ops.start("rollback", env, names, current_actor(), work))

    @app.post(f"{api}/promote", dependencies=[Auth], status_code=202)
    def promote(body: PromoteBody) -> JSONResponse:
        project = source()
        source_env, target_env = project.environment(body.source), project.environment(body.target)
        names = project.services(body.service)
        if source_env == target_env:
            raise UserInputError(f"source and target are both {source_env}: promotion goes from one "
                                 "environment to another")
        locks.refuse_if_busy(project.store, target_env)
        refuse_if_elsewhere(project.store, target_env, "promote")
        return started(ops.start("promote", target_env, names, current_actor(), lambda on_event, _on_output:
                                 operations.promote(project, source_env, target_env, names, force=body.force,
                                                    on_event=on_event,
                                                    rerun_release_command=body.rerun_release_command)))

    # Scale and restart act on the live release (no build, no new release); refused with 400 without one.
    def on_live_service(kind: str, environment: str | None, service: str,
                        act: Callable[[Project, str, str, Callable[..., Any]], Any]) -> JSONResponse:
        project = source()
        env = project.environment(environment)
        name = project.services(service)[0]
        locks.refuse_if_busy(project.store, env)
        refuse_if_elsewhere(project.store, env, kind)
        return started(ops.start(kind, env, [name], current_actor(), lambda on_event, _on_output: [
            act(project, env, name, on_event)]))

    @app.post(f"{api}/scale", dependencies=[Auth], status_code=202)
    def scale(body: ScaleBody) -> JSONResponse:
        return on_live_service("scale", body.environment, body.service, lambda project, env, name, on_event:
                               operations.scale(project, env, name, body.replicas, batch=body.batch,
                                                on_event=on_event))

    @app.post(f"{api}/restart", dependencies=[Auth], status_code=202)
    def restart(body: RestartBody) -> JSONResponse:
        return on_live_service("restart", body.environment, body.service, lambda project, env, name, on_event:
                               operations.restart(project, env, name, batch=body.batch, on_event=on_event))

    @app.get(f"{api}/operations/{{operation_id}}", dependencies=[Auth])
    def operation(operation_id: str) -> dict[str, Any]:
        """A deploy, rollback or promote this server started: its state (running, succeeded, failed,
        aborted, superseded), deployments, steps so far, and its result or error."""
        return found_operation(operation_id).summary()

    @app.get(f"{api}/operations/{{operation_id}}/events", dependencies=[Auth],
             response_class=StreamingResponse)
    def operation_events(operation_id: str, after: Annotated[int, Query(ge=0)] = 0,
                         last_event_id: Annotated[int | None, Header()] = None) -> StreamingResponse:
        """Server-sent events: the operation's progress (the events the CLI prints), from `after` (or the
        Last-Event-ID header), ending with an `end` event that carries the final state."""
        op = found_operation(operation_id)
        return StreamingResponse(follow(op, max(after, last_event_id or 0)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def found_operation(operation_id: str) -> Operation:
        op = ops.get(operation_id)
        if op is None:
            raise HTTPException(404, f"no operation {operation_id} (finished ones are kept for a day; "
                                     "see /api/v1/deployments)")
        return op

    def _control(action: str) -> Callable[[ControlBody], dict[str, Any]]:
        def handler(body: ControlBody) -> dict[str, Any]:
            project = source()
            return operations.control(project, project.environment(body.environment), body.service, action)
        handler.__name__ = action
        return handler

    for action in ("abort", "pause", "resume"):
        app.post(f"{api}/{action}", dependencies=[Auth], name=action)(_control(action))

    # ---- dashboard and the API's reference page ---------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=DASHBOARD_HEADERS)

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", headers=DASHBOARD_HEADERS)

    @app.get("/docs/{name}", include_in_schema=False)
    def docs_file(name: str) -> FileResponse:
        if name not in SWAGGER_FILES:
            raise HTTPException(404, f"no {name} here")
        return FileResponse(Path(str(swagger_ui_path)) / name, media_type=SWAGGER_FILES[name],
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"})

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
