"""A secret's value never reaches the API, the metrics, the server's log or the dashboard."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.dashboard.test_dashboard import expect, sign_in
from tests.support.api_server import Served, finished, serving
from tests.support.harness import ExampleProject


def every_get(server: Served, deployment: str) -> dict[str, str]:
    """The body of every GET the OpenAPI document lists, and of /metrics, by path."""
    with server.client() as client:
        paths = [p for p, methods in client.get("/openapi.json").json()["paths"].items() if "get" in methods]
        operation = finished(client, client.post("/api/v1/deploy", json={}))  # nothing changed: a quick one
        assert operation["state"] == "succeeded", operation
        bodies = {}
        for path in [*paths, "/metrics", "/"]:
            where = path.replace("{deployment_id}", deployment).replace("{operation_id}", operation["id"])
            response = client.get(where,
                                  params={"tail": "true", "limit": 1000} if path.endswith("/ledger") else None)
            assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:200]}"
            bodies[path] = response.text
    return bodies


def test_a_secret_value_is_in_no_api_answer_log_or_page(project: ExampleProject, page: Any,
                                                        tmp_path: Path) -> None:
    spec = project.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("    router: {", "    secrets: [API_KEY]\n    router: {", 1))
    secret = f"leak-canary-{uuid.uuid4().hex}"
    source = tmp_path / "value"
    source.write_text(secret)
    project.ingot("secret", "set", "API_KEY", "--from-file", str(source), check=True)
    source.unlink()
    project.ingot("deploy", check=True)
    with serving(project) as server:
        deployment = project.ingot("history", "--json", check=True).json[0]["deployment"]
        bodies = every_get(server, deployment)
        assert len(bodies) > 10 and "/api/v1/deployments/{deployment_id}" in bodies
        leaking = [path for path, body in bodies.items() if secret in body]
        assert leaking == []

        sign_in(page, server)
        expect(page.locator("#services")).to_contain_text(project.get()["release"])
        page.get_by_role("button", name="Check for drift again").click()
        expect(page.locator("#drift")).not_to_contain_text("Loading")
        assert secret not in page.content() and secret not in page.inner_text("body")
    assert secret not in (project.root / "serve.log").read_text()
