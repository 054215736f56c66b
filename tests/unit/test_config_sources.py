"""Config sources without a real server: etcd's prefix rule, how a source's values join a release snapshot, and
Consul KV against a stand-in answering as its documentation says."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import pytest
from pydantic import ValidationError

from ingot import config_store
from ingot.config_sources import SourceRead, from_spec
from ingot.config_sources.etcd import EtcdSource, prefix_end
from ingot.errors import OperationFailed, UserInputError
from ingot.spec import ServiceSpec
from ingot.spec.models import ConfigSourceSpec
from ingot.store import Store

SERVICE = ServiceSpec(command=["./run"], config=["FLAG", "LOCAL"])


def read(**values: str) -> SourceRead:
    return SourceRead("etcd", ("http://e1:2379",), "/apps/x/", 7, values, {name: 5 for name in values})


def test_prefix_end_is_etcds_rule() -> None:
    assert prefix_end(b"/apps/x/") == b"/apps/x0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"  # every key


def test_source_values_join_the_store_and_a_key_in_both_or_neither_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    config_store.set_config(store, "prod", "LOCAL", "from-store", "t")
    taken = config_store.snapshot(store, "prod", "web", SERVICE, read(FLAG="on", OTHER="unlisted"))
    assert taken == {"values": {"FLAG": "on", "LOCAL": "from-store"}}  # the same shape as store-only snapshots
    with pytest.raises(UserInputError) as both:
        config_store.snapshot(store, "prod", "web", SERVICE, read(FLAG="on", LOCAL="from-etcd"))
    assert "/apps/x/LOCAL" in str(both.value) and "config store (version 1)" in str(both.value)
    with pytest.raises(UserInputError) as missing:
        config_store.snapshot(store, "prod", "web", SERVICE, read())
    assert "/apps/x/FLAG is not in etcd (http://e1:2379) (revision 7)" in str(missing.value)
    with pytest.raises(UserInputError) as nul:
        config_store.snapshot(store, "prod", "web", SERVICE, read(FLAG="a\0b"))
    assert "NUL" in str(nul.value)


def test_a_secret_name_in_the_source_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    service = ServiceSpec(command=["./run"], secrets=["API_KEY"])
    with pytest.raises(UserInputError) as refused:
        config_store.snapshot(store, "prod", "web", service, read(API_KEY="plain"))
    assert "never supplies secrets" in str(refused.value) and "/apps/x/API_KEY" in str(refused.value)


def test_no_endpoint_answering_names_each() -> None:
    source = EtcdSource(("http://127.0.0.1:9", "http://127.0.0.1:1"), "/a/", timeout=1)
    with pytest.raises(OperationFailed) as down:
        source.read(["FLAG"])
    assert down.value.exit_code == 1
    assert [line.split(":")[2] for line in down.value.details] == ["9", "1"], down.value.details


class _FakeConsul(BaseHTTPRequestHandler):
    """Answers `GET /v1/kv/PREFIX?recurse` as Consul's documentation says (no real Consul is installable here)."""

    entries: ClassVar[list[dict[str, Any]]] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        prefix = unquote(url.path.removeprefix("/v1/kv/"))
        found = [e for e in self.entries if e["Key"].startswith(prefix)] if "recurse" in url.query else []
        body = json.dumps(found).encode() if found else b""
        self.send_response(200 if found else 404)
        self.send_header("X-Consul-Index", "42")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def consul() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeConsul)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_consul_kv_read_with_its_index(consul: str) -> None:
    _FakeConsul.entries = [
        {"Key": "apps/x/FLAG", "Value": base64.b64encode(b"on").decode(), "ModifyIndex": 40},
        {"Key": "apps/x/EMPTY", "Value": None, "ModifyIndex": 41},
        {"Key": "apps/x/deeper/FLAG", "Value": base64.b64encode(b"no").decode(), "ModifyIndex": 39},
    ]
    source = from_spec(ConfigSourceSpec.model_validate({"consul": {"endpoints": [consul], "prefix": "apps/x/"}}))
    got = source.read(["FLAG", "EMPTY", "ABSENT"])
    assert (got.kind, got.revision, got.values, got.versions) == (
        "consul", 42, {"FLAG": "on", "EMPTY": ""}, {"FLAG": 40, "EMPTY": 41})
    nothing = from_spec(ConfigSourceSpec.model_validate({"consul": {"endpoints": [consul], "prefix": "none/"}}))
    assert nothing.read(["FLAG"]).values == {}  # a 404 with an index: no keys, not an outage
    with pytest.raises(ValidationError, match="one source kind"):
        ConfigSourceSpec.model_validate({"consul": {"endpoints": [consul], "prefix": "a/"},
                                         "etcd": {"endpoints": [consul], "prefix": "/a/"}})
