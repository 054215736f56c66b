"""`services.<name>.routes`: what is accepted, what is refused (naming the keys), and what a route-only
service means for its listener and its deployment parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingot.deploy_params import NO_LISTENER, DeployParams
from ingot.operations import deploy_params
from ingot.spec import SpecError, load_spec

HEAD = "project: hi\nservices:\n"


def service(name: str, body: str = "") -> str:
    return f"  {name}:\n    command: [python, app.py]\n{body}"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ingot.yaml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, text))
    return [line.strip() for line in str(caught.value).splitlines()[1:]]


def test_routes_are_read_with_their_defaults_and_lower_cased_hosts(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("cert")
    (tmp_path / "k.pem").write_text("key")
    spec = load_spec(write(tmp_path, HEAD + service("web", "    routes:\n"
                                              "      - {host: App.Example.COM}\n"
                                              "      - {host: '*.example.com', path: /api, tls: off}\n"
                                              "      - {host: files.example.com, tls: {cert: c.pem, key: k.pem}, "
                                              "hsts: 600, redirect: false}\n")))
    auto, wild, files = spec.services["web"].routes
    assert (auto.host, auto.path, auto.tls, auto.redirects) == ("app.example.com", "/", "auto", True)
    assert (wild.host, wild.tls, wild.redirects) == ("*.example.com", "off", False)
    assert (files.redirects, files.hsts) == (False, 600)
    params = deploy_params(spec.services["web"], root=tmp_path)
    assert params.listen == NO_LISTENER  # routes and no router.listen: no listener of its own
    assert params.routes[2].cert == str((tmp_path / "c.pem").resolve()) and params.routes[2].tls == "files"
    assert params.url == "https://app.example.com/"
    assert DeployParams.from_dict(params.as_dict()) == params


def test_a_service_without_routes_keeps_its_parameters_exactly(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, HEAD + service("web")))
    params = deploy_params(spec.services["web"])
    assert params.listen == ("127.0.0.1", 8080) and "routes" not in params.as_dict()
    assert params.url == "http://127.0.0.1:8080/"


def test_routes_with_router_listen_keep_that_listener(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, HEAD + service("web", "    router: {listen: '127.0.0.1:9000'}\n"
                                              "    routes: [{host: a.test}]\n")))
    assert deploy_params(spec.services["web"]).urls == ["https://a.test/", "http://127.0.0.1:9000/"]


def test_route_only_services_do_not_take_the_default_listen_address(tmp_path: Path) -> None:
    load_spec(write(tmp_path, HEAD + service("web") + service("api", "    routes: [{host: api.test}]\n")))
    clash = problems(tmp_path, HEAD + service("web") + service("api"))
    assert "the default, as router.listen is not set" in clash[0]


@pytest.mark.parametrize(("route", "says"), [
    ("{host: bad_host}", "routes[0].host: expected a DNS name such as app.example.com"),
    ("{host: '*.com'}", "routes[0].host: expected a DNS name"),
    ("{host: 'a.*.test'}", "routes[0].host: expected a DNS name"),
    ("{host: a.test, path: api}", "routes[0].path: must start with '/'"),
    ("{host: a.test, path: '/a?b'}", "routes[0].path: expected a path prefix"),
    ("{host: a.test, tls: on}", "routes[0].tls: expected auto, off, or {cert: FILE, key: FILE}"),
    ("{host: a.test, tls: off, redirect: true}", "routes[0].redirect: a redirect to HTTPS needs tls"),
    ("{host: a.test, tls: off, hsts: 60}", "routes[0].hsts: HSTS is sent over HTTPS only"),
    ("{host: a.test, tls: {cert: missing.pem, key: k.pem}}", "routes[0].tls.cert: no such file 'missing.pem'"),
    ("{host: a.test, hsts: -1}", "routes[0].hsts"),
])
def test_bad_routes_name_the_key(tmp_path: Path, route: str, says: str) -> None:
    (tmp_path / "k.pem").write_text("key")
    found = problems(tmp_path, HEAD + service("web", f"    routes: [{route}]\n"))
    assert any(says in p for p in found), found
    assert all(p.startswith(f"{tmp_path / 'ingot.yaml'}:") for p in found), found


def test_one_host_and_path_twice_is_refused_naming_both_keys(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + service("web", "    routes: [{host: a.test, path: /api}]\n")
                     + service("api", "    routes: [{host: A.test, path: /api/}]\n"))
    assert len(found) == 1
    assert "services.api.routes[0]: a.test/api/ is claimed by service web too (services.web.routes[0] at" in found[0]
    twice = problems(tmp_path, HEAD + service("web", "    routes: [{host: a.test}, {host: a.test}]\n"))
    assert "routes[1] claims a.test/, as routes[0] does" in twice[0]


def test_environments_override_routes_and_may_not_share_one(tmp_path: Path) -> None:
    base = HEAD + service("web", "    routes: [{host: a.test}]\n")
    shared = problems(tmp_path, base + "environments:\n  staging: {}\n  production: {}\n")
    assert "claimed by environments staging and production alike" in shared[0]
    spec = load_spec(write(tmp_path, base + "environments:\n  staging:\n    services:\n"
                                            "      web: {routes: [{host: staging.a.test}]}\n  production: {}\n"))
    assert [r.host for r in spec.service_for("staging", "web").routes] == ["staging.a.test"]
    assert [r.host for r in spec.service_for("production", "web").routes] == ["a.test"]
