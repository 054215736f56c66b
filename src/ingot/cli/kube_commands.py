"""`ingot render` (a Kubernetes environment's manifests) and `ingot kube secrets`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ingot.cli.options import Env, SpecFile
from ingot.cli.output import console, errors

Service = Annotated[str | None, typer.Option("--service", "-s", help="Only this service.")]

kube_app = typer.Typer(help="Kubernetes environments (target: {kind: kubernetes}).", no_args_is_help=True)


def render_command(
    file: SpecFile = None,
    env: Env = None,
    service: Service = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write one file per object into this "
                                             "directory (for review, or for Argo CD / Flux) instead of "
                                             "printing them.")] = None,
) -> None:
    """Print (or write) the Kubernetes manifests of each service's release: deterministic, no secret values.

    Builds (and pushes) images and records releases as a deploy would; sends nothing to the cluster.

    Secrets are named, never written: 'ingot kube secrets' creates them in the cluster.
    """
    from ingot.cli.main import env_name, guarded, project_for
    from ingot.kube import operations as kube

    project = project_for(file)
    environment = guarded(lambda: project.environment(env_name(env)))
    names = guarded(lambda: project.services(service))
    # Build output goes to stderr: stdout carries only the manifests.
    items = guarded(lambda: kube.render_environment(project, environment, names,
                                                    lambda line: errors.print(f"  | {line}", markup=False)))
    files = kube.manifests(project, environment, items)
    if out is None:
        documents = [text for name, text in files.items() if name.endswith(".yaml")]
        sys.stdout.write("---\n".join(documents))
    else:
        written, removed = guarded(lambda: _write(out, files))
        errors.print(f"wrote {len(written)} file(s) to {out}" + (f"; removed {len(removed)} stale: "
                                                                  f"{', '.join(removed)}" if removed else ""),
                     markup=False)
    for item in items:
        for secret in item.rendered.withheld:
            errors.print(f"{item.service}: Secret {secret.name} (keys {', '.join(secret.keys)}) is not written; "
                         f"create it in the cluster with 'ingot kube secrets --env {environment}'", markup=False)


def _write(out: Path, files: dict[str, str]) -> tuple[list[str], list[str]]:
    """Write `files` into `out`; remove files an earlier render wrote there that are not rendered any more
    (a GitOps tool would apply a stale Deployment otherwise). Other files are left alone."""
    from ingot.errors import UserInputError
    from ingot.kube.render import HEADER_START

    try:
        out.mkdir(parents=True, exist_ok=True)
        removed = []
        for path in sorted(out.iterdir()):
            if path.name in files or not path.is_file():
                continue
            ours = path.suffix == ".yaml" and path.read_text(errors="replace").startswith(HEADER_START)
            if ours or path.name == "SECRETS.md":
                path.unlink()
                removed.append(path.name)
        for name, text in files.items():
            (out / name).write_text(text)
    except OSError as exc:
        raise UserInputError(f"cannot write to {out}: {exc.strerror or exc}") from None
    return list(files), removed


@kube_app.command("secrets")
def secrets_command(file: SpecFile = None, env: Env = None, service: Service = None) -> None:
    """Create in the cluster the Secrets that rendered manifests name (values go straight to the API server)."""
    from ingot.cli.main import env_name, guarded, project_for
    from ingot.kube import operations as kube

    project = project_for(file)
    environment = guarded(lambda: project.environment(env_name(env)))
    names = guarded(lambda: project.services(service))
    made = guarded(lambda: kube.apply_secrets(project, environment, names))
    if not made:
        console.print(f"no service in {environment} uses secrets")
    for name in made:
        console.print(f"applied Secret {name}")
