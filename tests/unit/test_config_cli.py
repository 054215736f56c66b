"""`ingot config` and `ingot secret` through the real CLI: values in, never a secret out; bad input exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from ingot import config_store
from ingot.secrets_box import KEY_FILE_ENV, load_box
from ingot.store import Store

SPEC = """project: hello
services:
  web:
    command: [python, app.py]
    config: [FEATURE_FLAG]
    secrets: [API_KEY]
    router: {listen: "127.0.0.1:18081"}
environments:
  staging: {}
  production:
    services:
      web: {router: {listen: "127.0.0.1:18082"}}
"""


def ingot(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("INGOT_HOME", "INGOT_SECRETS_KEY_FILE")}
    return subprocess.run([sys.executable, "-m", "ingot", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, input=stdin if stdin is not None else "", env={**env, "INGOT_ACTOR": "tester"})


def test_config_set_get_list_history(tmp_path: Path) -> None:
    (tmp_path / "ingot.yaml").write_text(SPEC)
    assert ingot(tmp_path, "config", "set", "FEATURE_FLAG", "on").returncode == 0
    assert ingot(tmp_path, "config", "set", "FEATURE_FLAG", "off", "--env", "staging").returncode == 0
    assert ingot(tmp_path, "config", "set", "FEATURE_FLAG", "prod", "--env", "production").returncode == 0
    assert ingot(tmp_path, "config", "get", "FEATURE_FLAG").stdout == "off\n"
    got = json.loads(ingot(tmp_path, "config", "get", "FEATURE_FLAG", "--env", "production", "--json").stdout)
    assert (got["value"], got["version"], got["actor"]) == ("prod", 1, "tester")
    listed = json.loads(ingot(tmp_path, "config", "list", "--json").stdout)
    assert [(e["key"], e["value"], e["version"]) for e in listed] == [("FEATURE_FLAG", "off", 2)]
    history = json.loads(ingot(tmp_path, "config", "history", "FEATURE_FLAG", "--json").stdout)
    assert [(e["value"], e["version"]) for e in history] == [("off", 2), ("on", 1)]


def test_bad_names_unknown_environments_and_missing_keys_exit_2(tmp_path: Path) -> None:
    (tmp_path / "ingot.yaml").write_text(SPEC)
    bad = ingot(tmp_path, "config", "set", "1FLAG", "x")
    assert bad.returncode == 2 and "not a valid environment variable name" in bad.stderr
    bad = ingot(tmp_path, "secret", "set", "MY-KEY", stdin="x")
    assert bad.returncode == 2 and "not a valid environment variable name" in bad.stderr
    bad = ingot(tmp_path, "config", "set", "FLAG", "x", "--env", "nowhere")
    assert bad.returncode == 2 and "unknown environment 'nowhere'" in bad.stderr
    missing = ingot(tmp_path, "config", "get", "FLAG")
    assert missing.returncode == 2 and "ingot config set FLAG VALUE --env staging" in missing.stderr
    # A deploy of a service listing keys with no value: refused before anything is built or started.
    refused = ingot(tmp_path, "deploy", "--env", "production")
    assert refused.returncode == 2, refused.stderr
    assert "ingot config set FEATURE_FLAG VALUE --env production" in refused.stderr
    assert "ingot secret set API_KEY --env production" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not list((tmp_path / ".ingot").glob("*/agent.pid")) and not list((tmp_path / ".ingot").glob("*/artifacts"))


def test_secret_values_come_from_stdin_or_a_file_and_are_never_printed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    (tmp_path / "ingot.yaml").write_text(SPEC)
    value_file = tmp_path / "value.txt"
    value_file.write_text("from-file-value-7c1\n")
    first = ingot(tmp_path, "secret", "set", "API_KEY", stdin="stdin-value-9a2\n")
    second = ingot(tmp_path, "secret", "set", "API_KEY", "--from-file", str(value_file))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    empty = ingot(tmp_path, "secret", "set", "OTHER", stdin="")
    assert empty.returncode == 2 and "empty" in empty.stderr
    unreadable = ingot(tmp_path, "secret", "set", "OTHER", "--from-file", str(tmp_path / "nope"))
    assert unreadable.returncode == 2 and "cannot read it" in unreadable.stderr
    listed = ingot(tmp_path, "secret", "list", "--json")
    [entry] = json.loads(listed.stdout)
    assert (entry["name"], entry["version"], entry["state"], entry["actor"]) == ("API_KEY", 2, "set", "tester")
    removed = ingot(tmp_path, "secret", "rm", "API_KEY")
    assert removed.returncode == 0
    history = json.loads(ingot(tmp_path, "secret", "history", "--json").stdout)
    assert [(e["version"], e["state"]) for e in history] == [(3, "removed"), (2, "set"), (1, "set")]
    assert ingot(tmp_path, "secret", "rm", "API_KEY").returncode == 2
    outputs = [first, second, listed, removed, ingot(tmp_path, "audit", "log", "--json"),
               ingot(tmp_path, "secret", "list")]
    for result in outputs:
        assert "value-9a2" not in result.stdout + result.stderr
        assert "value-7c1" not in result.stdout + result.stderr
    # The stored values decrypt to exactly what was given: one trailing newline dropped, nothing else.
    store = Store(tmp_path / ".ingot" / "hello")
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT version, ciphertext, key_id FROM secret_versions WHERE action = 'set' "
                                 "ORDER BY version")).all()
    store.close()
    box = load_box(tmp_path / ".ingot" / "hello" / "keys")
    assert [box.open(c, config_store.secret_context("staging", "API_KEY", v), sealed_with=k)
            for v, c, k in rows] == ["stdin-value-9a2", "from-file-value-7c1"]
    for raw in (tmp_path / ".ingot" / "hello").glob("state.db*"):
        assert b"value-9a2" not in raw.read_bytes() and b"value-7c1" not in raw.read_bytes()


def test_config_set_takes_key_equals_value_pairs_and_unset_removes_a_key(tmp_path: Path) -> None:
    (tmp_path / "ingot.yaml").write_text(SPEC)
    done = ingot(tmp_path, "config", "set", "FEATURE_FLAG=on", "DSN=postgres://db/x?sslmode=require")
    assert done.returncode == 0, done.stderr
    listed = json.loads(ingot(tmp_path, "config", "list", "--json").stdout)
    assert [(e["key"], e["value"]) for e in listed] == [("DSN", "postgres://db/x?sslmode=require"),
                                                        ("FEATURE_FLAG", "on")]
    # Bad input sets nothing, even beside a good pair.
    for args, says in ((["=x"], "no key before '='"), (["FEATURE_FLAG"], "has no value"),
                       (["OK=1", "NOPE"], "has no value"), (["1BAD=x"], "not a valid environment variable name")):
        bad = ingot(tmp_path, "config", "set", *args)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)
    assert "OK" not in {e["key"] for e in json.loads(ingot(tmp_path, "config", "list", "--json").stdout)}
    assert ingot(tmp_path, "config", "unset", "DSN").returncode == 0
    assert [e["key"] for e in json.loads(ingot(tmp_path, "config", "list", "--json").stdout)] == ["FEATURE_FLAG"]
    history = json.loads(ingot(tmp_path, "config", "history", "DSN", "--json").stdout)
    assert [(e["version"], e["action"]) for e in history] == [(2, "unset"), (1, "set")]
    again = ingot(tmp_path, "config", "unset", "DSN")
    assert again.returncode == 2 and "nothing to unset" in again.stderr
    # A service listing an unset key is refused a new release, naming the command that fixes it.
    assert ingot(tmp_path, "config", "unset", "FEATURE_FLAG").returncode == 0
    assert ingot(tmp_path, "secret", "set", "API_KEY", stdin="s3cret-value").returncode == 0
    refused = ingot(tmp_path, "deploy")
    assert refused.returncode == 2 and "config FEATURE_FLAG has no value" in refused.stderr
