"""The edge's routing (ingot.edge.routing) and machine settings (ingot.edge.settings), as pure functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingot.edge.front import Binding, Route
from ingot.edge.routing import Table, conflicts, host_candidates, normal_host, path_matches, request_path
from ingot.edge.settings import LETS_ENCRYPT, EdgeSettings, parse_listener
from ingot.errors import UserInputError
from ingot.routers.base import ClientPolicy

label = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)
segment = st.from_regex(r"[a-z0-9._-]{1,6}", fullmatch=True)
paths = st.lists(segment, max_size=4).map(lambda parts: "/" + "/".join(parts))


def test_host_is_matched_exactly_first_then_by_the_longest_wildcard() -> None:
    table = Table([("app.example.com", "/", "exact"), ("*.example.com", "/", "wild"),
                   ("*.b.example.com", "/", "deeper"), ("app.example.com", "/api", "api")])
    assert table.lookup("app.example.com", "/") == "exact"
    assert table.lookup("APP.Example.COM:8443", "/api/v1") == "api"
    assert table.lookup("app.example.com.", "/apix") == "exact"
    assert table.lookup("x.example.com", "/") == "wild"
    assert table.lookup("x.b.example.com", "/") == "deeper"
    assert table.lookup("example.com", "/") is None  # a wildcard covers names under it, not itself
    assert table.lookup("other.test", "/") is None
    assert table.lookup("[::1]:80", "/") is None
    for host, target in [("app.example.com", "/api/v1?q"), ("x.b.example.com:80", "/"), ("nope", "/"),
                         ("APP.example.com", "/apix"), ("app.example.com", "/api")]:
        for _ in range(2):  # the second time from the remembered host
            assert table.lookup_request(host.encode(), target.encode()) == table.lookup(host, request_path(target))


def test_an_exact_host_without_a_matching_path_does_not_fall_back_to_a_wildcard() -> None:
    table = Table([("app.example.com", "/api", "api"), ("*.example.com", "/", "wild")])
    assert table.lookup("app.example.com", "/") is None


@given(prefix=paths, rest=paths)
def test_a_prefix_matches_itself_and_what_is_below_it_on_segment_boundaries(prefix: str, rest: str) -> None:
    assert path_matches(prefix, prefix)
    below = prefix.rstrip("/") + rest
    assert path_matches(prefix, below)
    if prefix != "/":
        assert not path_matches(prefix, prefix.rstrip("/") + "x" + rest)


@given(st.lists(paths, min_size=1, max_size=6, unique=True), paths)
def test_the_longest_matching_prefix_wins(prefixes: list[str], path: str) -> None:
    table = Table(("h.test", p, p) for p in prefixes)
    matching = [p for p in prefixes if path_matches(p, path)]
    found = table.lookup("h.test", path)
    if not matching:
        assert found is None
    else:
        assert found is not None and len(found.rstrip("/")) == max(len(p.rstrip("/")) for p in matching)


@given(st.lists(label, min_size=1, max_size=5))
def test_wildcard_candidates_go_from_the_name_to_ever_shorter_suffixes(labels: list[str]) -> None:
    host = ".".join(labels)
    candidates = list(host_candidates(host))
    assert candidates[0] == host
    assert [c.count(".") for c in candidates[1:]] == sorted((c.count(".") for c in candidates[1:]), reverse=True)
    assert len(candidates) == len(labels)


def test_request_targets_and_hosts_are_normalised() -> None:
    assert request_path("/a/b?x=1#f") == "/a/b"
    assert request_path("http://h.test/a?q") == "/a"
    assert request_path("*") == "/"
    assert normal_host(" App.Test:80 ") == "app.test"


def test_conflicts_name_both_routers_and_ignore_one_router_twice() -> None:
    a = Binding(Route("h.test", "/api/"), "r1", "/s1", "p1/web")
    b = Binding(Route("h.test", "/api"), "r2", "/s2", "p2/web")
    again = Binding(Route("h.test", "/api"), "r1", "/s1", "p1/web")
    assert conflicts([a, again]) == []
    assert conflicts([a, b]) == [(a, b)]


# ---- settings ---------------------------------------------------------------------------------------

def test_settings_default_then_file_then_environment(tmp_path: Path) -> None:
    defaults = EdgeSettings.load(tmp_path, {})
    assert (defaults.kind, defaults.http, defaults.https) == ("builtin", ("", 80), ("", 443))
    assert defaults.acme_directory == LETS_ENCRYPT and defaults.acme_email is None
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    (tmp_path / "settings.json").write_text(json.dumps({"https": "127.0.0.1:8443", "acme_email": "a@b.test",
                                                        "acme_ca_bundle": str(bundle)}))
    from_file = EdgeSettings.load(tmp_path, {})
    assert from_file.https == ("127.0.0.1", 8443) and from_file.acme_email == "a@b.test"
    assert from_file.acme_ca_bundle == bundle
    env = EdgeSettings.load(tmp_path, {"INGOT_EDGE_HTTPS": "[::1]:9443", "INGOT_EDGE_HTTP": "off",
                                       "INGOT_ACME_DIRECTORY": "https://pebble.test/dir"})
    assert env.https == ("::1", 9443) and env.http is None and env.acme_directory == "https://pebble.test/dir"
    assert EdgeSettings.load(tmp_path, {"INGOT_EDGE_HTTP": ""}).http is None


def test_the_shared_listeners_client_limits_from_the_file_and_the_environment(tmp_path: Path) -> None:
    assert EdgeSettings.load(tmp_path, {}).clients == ClientPolicy()
    (tmp_path / "settings.json").write_text(json.dumps({"head_timeout": "2.5s", "min_body_rate": 0,
                                                        "max_connections": 300,
                                                        "trusted_proxies": ["10.0.0.0/8", "fd00::/8"]}))
    clients = EdgeSettings.load(tmp_path, {}).clients
    assert (clients.head_timeout, clients.min_body_rate, clients.max_connections) == (2.5, 0, 300)
    assert clients.trusted_proxies == ("10.0.0.0/8", "fd00::/8")
    env = EdgeSettings.load(tmp_path, {"INGOT_EDGE_HEAD_TIMEOUT": "500ms", "INGOT_EDGE_TRUSTED_PROXIES": "",
                                       "INGOT_EDGE_MAX_CONNECTIONS": "12"}).clients
    assert (env.head_timeout, env.max_connections, env.trusted_proxies, env.min_body_rate) == (0.5, 12, (), 0)


@pytest.mark.parametrize(("environ", "file", "says"), [
    ({"INGOT_EDGE_KIND": "nginx"}, None, "INGOT_EDGE_KIND: unknown edge kind 'nginx'"),
    ({"INGOT_EDGE_HTTP": "80"}, None, "INGOT_EDGE_HTTP: expected HOST:PORT or :PORT"),
    ({"INGOT_EDGE_HTTPS": ":70000"}, None, "INGOT_EDGE_HTTPS: port must be between 1 and 65535, got 70000"),
    ({}, {"https": "https://example.com:443"}, "settings.json: key 'https': expected HOST:PORT or :PORT "
                                               "(every address), such as 127.0.0.1:8080 or :8080, not a URL"),
    ({"INGOT_ACME_DIRECTORY": "letsencrypt"}, None, "INGOT_ACME_DIRECTORY: expected the URL of an ACME directory"),
    ({"INGOT_ACME_CA_BUNDLE": "/nonexistent.pem"}, None, "INGOT_ACME_CA_BUNDLE: no such file"),
    ({}, {"http": 80}, "settings.json: key 'http' must be a string"),
    ({}, {"htps": ":443"}, "settings.json: unknown key 'htps'"),
    ({"INGOT_EDGE_HEAD_TIMEOUT": "soon"}, None, "INGOT_EDGE_HEAD_TIMEOUT: expected a duration like 500ms"),
    ({"INGOT_EDGE_HEAD_TIMEOUT": "0s"}, None, "INGOT_EDGE_HEAD_TIMEOUT: must be more than 0 seconds"),
    ({"INGOT_EDGE_MAX_CONNECTIONS": "0"}, None, "INGOT_EDGE_MAX_CONNECTIONS: expected a whole number of at least 1"),
    ({}, {"min_body_rate": -5}, "settings.json: key 'min_body_rate': expected a whole number of at least 0"),
    ({}, {"max_connections": True}, "settings.json: key 'max_connections' must be a number or a string"),
    ({"INGOT_EDGE_TRUSTED_PROXIES": "10.0.0.0/8, lb"}, None, "INGOT_EDGE_TRUSTED_PROXIES: 'lb' is not an IP network"),
    ({}, {"trusted_proxies": [10]}, "settings.json: key 'trusted_proxies' must be a list of CIDR strings"),
    ({}, "[1", "settings.json: not valid JSON"),
])
def test_bad_settings_name_the_variable_or_the_key(tmp_path: Path, environ: dict[str, str], file: object,
                                                   says: str) -> None:
    if file is not None:
        (tmp_path / "settings.json").write_text(file if isinstance(file, str) else json.dumps(file))
    with pytest.raises(UserInputError) as caught:
        EdgeSettings.load(tmp_path, environ)
    assert says in caught.value.message
    assert caught.value.exit_code == 2


def test_listeners_accept_host_port_and_port_only() -> None:
    assert parse_listener(":443", "X") == ("", 443)
    assert parse_listener("0.0.0.0:80", "X") == ("0.0.0.0", 80)
    assert parse_listener("OFF", "X") is None
