"""`ingot serve --watch`: the GitOps watcher runs beside the API, and its deploys show through it."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_gitops import commit, git
from tests.support.api_server import serving
from tests.support.harness import make_example, poll, stop_everything


def test_serve_deploys_each_new_commit_of_the_watched_branch(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    (example.root / ".gitignore").write_text(".ingot/\n__pycache__/\nserve.log\n")
    git(example.root, "init", "--quiet", "-b", "main")
    first = commit(example, "version 1")
    try:
        with serving(example, "--watch", ".", "--branch", "main", "--watch-env", "staging",
                     "--interval", "200ms") as server:
            poll(lambda: example.get()["version"] == "1", timeout=120, what="the first commit live")
            example.set_version("2")
            second = commit(example, "version 2")
            poll(lambda: example.get()["version"] == "2", timeout=120, what="the second commit live")
            with server.client() as client:
                releases = client.get("/api/v1/releases").json()
                assert [r["commit"] for r in releases[:2]] == [second, first]

                def watch_deploys() -> list[str]:
                    page = client.get("/api/v1/ledger", params={"tail": "true", "limit": 1000}).json()
                    return [e["subject"] for e in page["entries"] if e["action"] == "watch.deploy"]

                poll(lambda: watch_deploys() == [first, second], timeout=30, what="both commits recorded")
    finally:
        stop_everything(example)
