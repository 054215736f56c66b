"""The FastAPI app: read endpoints, actions, metrics and the dashboard, behind bearer tokens.

Every endpoint but `/healthz`, the dashboard's static shell, `/docs` and `/openapi.json` needs a token, checked
with its scope by `ingot.api.guard` before the request's body is read (reads need `read`, actions `deploy`);
the token's name is the actor recorded for what the request does. Handlers are plain
functions (FastAPI runs them in its thread pool) because the service functions they call block: they
talk to the agent over its local socket, and the agent runs in this same process's event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict
from swagger_ui_bundle import swagger_ui_path

from ingot import __version__, operations, views
from ingot.api.guard import MAX_BODY_DEFAULT, Backoff, Guard
from ingot.api.metrics import render_metrics
from ingot.errors import IngotError
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


class RollbackBody(_Body):
    environment: str | None = None
    service: str | None = None
    to: str | None = None


class PromoteBody(_Body):
    source: str
    target: str
    service: str | None = None
    force: bool = False


class ControlBody(_Body):
    environment: str | None = None
    service: str | None = None


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
    @app.post(f"{api}/deploy", dependencies=[Auth])
    def deploy(body: DeployBody) -> list[dict[str, Any]]:
        project = source()
        env = project.environment(body.environment)
        outcomes = operations.deploy(project, env, project.services(body.service))
        return [o.as_dict() for o in outcomes]

    @app.post(f"{api}/rollback", dependencies=[Auth])
    def rollback(body: RollbackBody) -> list[dict[str, Any]]:
        project = source()
        env = project.environment(body.environment)
        names = project.services(body.service)
        return [operations.rollback(project, env, name, body.to).as_dict() for name in names]

    @app.post(f"{api}/promote", dependencies=[Auth])
    def promote(body: PromoteBody) -> list[dict[str, Any]]:
        project = source()
        outcomes = operations.promote(project, project.environment(body.source), project.environment(body.target),
                                      project.services(body.service), force=body.force)
        return [o.as_dict() for o in outcomes]

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
