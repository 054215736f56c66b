"""Object names and labels on a cluster: stable, derived from content, never from time.

Every name fits a DNS label (63 characters): service names are at most 40, release ids 12.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingot.canonical import content_digest

MANAGER = "ingot"  # the server-side apply field manager
PREFIX = "ingot.dev/"
PROJECT = PREFIX + "project"
ENVIRONMENT = PREFIX + "environment"
SERVICE = PREFIX + "service"
RELEASE = PREFIX + "release"
DEPLOYMENT = PREFIX + "deployment"
TEMPLATE_DIGEST = PREFIX + "template-digest"
JOB = PREFIX + "job"  # on a release_command Job's pods (never SERVICE: no Service may select them)
VOLUME = PREFIX + "volume"  # on a volume's PersistentVolumeClaim: the spec's volume name
ALL_TRACKS = "*"  # a Service selecting the pods of every Deployment of its service (replica-ratio traffic)
HTTP_PORT = 80  # the port of every Service; it forwards to the container port named "http"


def short_digest(data: Any, length: int = 10) -> str:
    return content_digest(data).removeprefix("sha256:")[:length]


def deployment_name(service: str, release: str, template: Mapping[str, Any]) -> str:
    """`<service>-<release>-<template digest>`: one Deployment per release and pod template.

    The template digest is in the name because a Deployment's pod template is never changed in place:
    a change to anything in it (even probe timing, which is not part of the release) makes a new
    Deployment, rolled out by the strategy like any release.
    """
    return f"{service}-{release}-{short_digest(template, 6)}"


def config_map_name(service: str, values: Mapping[str, str]) -> str:
    return f"{service}-config-{short_digest(dict(values))}"


def secret_name(service: str, environment: str, refs: Mapping[str, Any]) -> str:
    """Named by the secret *versions* it holds, not by their values: a digest of a short secret value
    could be brute-forced from an object name, which every reader of the namespace can list."""
    return f"{service}-secrets-{short_digest({'environment': environment, 'versions': dict(refs)})}"


def release_job_name(service: str, release: str) -> str:
    """The release_command's Job: one per release, so a rerun of the same release reuses its name."""
    return f"{service}-release-{release}"


def run_job_name(service: str, run_id: str) -> str:
    """An `ingot run` one-off's Job: one per run (`run_id` is fresh each time), never a release's."""
    return f"{service}-run-{run_id}"


def volume_claim_name(service: str, volume: str) -> str:
    """A named volume's PersistentVolumeClaim: per service and volume, never per release (data outlives them)."""
    name = f"{service}-{volume}"
    return name if len(name) <= 63 else f"{service}-volume-{short_digest(volume, 12)}"


def preview_service(service: str) -> str:
    return f"{service}-preview"


def canary_service(service: str) -> str:
    return f"{service}-canary"


def common_labels(project: str, environment: str, service: str) -> dict[str, str]:
    """On every object ingot makes: how `ingot drift` finds them, and what kubectl users filter by."""
    return {
        "app.kubernetes.io/managed-by": MANAGER,
        "app.kubernetes.io/name": service,
        "app.kubernetes.io/part-of": project,
        PROJECT: project,
        ENVIRONMENT: environment,
        SERVICE: service,
    }


def environment_selector(project: str, environment: str) -> str:
    """The label selector of everything ingot made for one environment of one project."""
    return f"{PROJECT}={project},{ENVIRONMENT}={environment}"


def service_selector(project: str, environment: str, service: str, deployment: str) -> dict[str, str]:
    """What a Service selects: the pods of one Deployment, or of all of the service's (ALL_TRACKS)."""
    selector = {PROJECT: project, ENVIRONMENT: environment, SERVICE: service}
    if deployment != ALL_TRACKS:
        selector[DEPLOYMENT] = deployment
    return selector


def selected_deployment(selector: Mapping[str, str] | None) -> str | None:
    """The inverse of `service_selector`: which Deployment a live Service sends traffic to."""
    if not selector:
        return None
    return selector.get(DEPLOYMENT, ALL_TRACKS)
