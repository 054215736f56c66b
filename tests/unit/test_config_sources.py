"""Config sources without a server: etcd's prefix range rule, and how a source's values join a release snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingot import config_store
from ingot.config_sources import SourceRead
from ingot.config_sources.etcd import EtcdSource, prefix_end
from ingot.errors import OperationFailed, UserInputError
from ingot.spec import ServiceSpec
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
