"""Builds are fenced (issue 10, point 2): attacks a hostile build input would try, and what stops them.

A requirement's build code runs as an unprivileged user with a clean environment in a private copy of the
context; `build:` cannot leave the spec's directory (or its git repository); a symlink out of the context is
refused by name; a directory swapped for a symlink while the context is copied gains nothing; stored
artifacts are owner-only read-only.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from ingot.artifacts import ArtifactStore, build_artifact
from ingot.artifacts.fence import BUILD_USER, build_env, copy_tree, escaping_symlinks
from ingot.errors import UserInputError
from tests.support.harness import ExampleProject, make_example

SECRET = "operator-secret-0f4c1d"
OPERATOR_ENV = {
    "AWS_SECRET_ACCESS_KEY": "aws-" + SECRET,
    "INGOT_API_TOKEN": "token-" + SECRET,
    "GITHUB_TOKEN": "gh-" + SECRET,
}
ROOT = os.geteuid() == 0

# An in-tree PEP 517 backend named setup.py: it is what `pip install ./evilpkg` runs, like any setup.py,
# and needs no setuptools download. It records what it could see and do into the package it builds.
EVIL_BACKEND = '''
import base64, hashlib, json, os, zipfile

def _attempt(action):
    try:
        return ["ok", action()]
    except Exception as exc:
        return ["denied", type(exc).__name__]

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    cwd = os.getcwd()
    report = {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "environ": dict(os.environ), "cwd": cwd,
        "read_secret": _attempt(lambda: open(SECRET_FILE).read()),
        "read_shadow": _attempt(lambda: open("/etc/shadow").read()[:10]),
        "write_spec_dir": _attempt(lambda: open(os.path.join(SPEC_DIR, "pwned"), "w").write("x")),
        "list_root_home": _attempt(lambda: sorted(os.listdir("/root"))),
        "work": [os.stat(cwd.split("/src/")[0]).st_mode & 0o7777, os.stat(cwd.split("/src/")[0]).st_uid],
        "no_new_privs": [line for line in open("/proc/self/status") if line.startswith("NoNewPrivs")],
        "pid1": open("/proc/1/cmdline").read().replace("\\0", " "),
    }
    files = {"evilpkg/__init__.py": b"", "evilpkg/report.json": json.dumps(report).encode(),
             "evilpkg-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\\nName: evilpkg\\nVersion: 0.1\\n",
             "evilpkg-0.1.dist-info/WHEEL":
                 b"Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for n, d in files.items()] + ["evilpkg-0.1.dist-info/RECORD,,"]
    files["evilpkg-0.1.dist-info/RECORD"] = ("\\n".join(record) + "\\n").encode()
    name = "evilpkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
    return name
'''
PYPROJECT = '[build-system]\nrequires = []\nbuild-backend = "setup"\nbackend-path = ["."]\n'


def _stored_objects(state: Path) -> list[Path]:
    objects = state / "artifacts" / "objects"
    return sorted(objects.iterdir()) if objects.is_dir() else []


def _assert_no_secret_in(tree: Path) -> None:
    for current, _dirs, files in os.walk(tree):
        for name in files:
            path = Path(current, name)
            if not path.is_symlink():
                assert SECRET.encode() not in path.read_bytes(), path


def _with_evil_requirement(example: ExampleProject, secret_file: Path) -> None:
    pkg = example.root / "evilpkg"
    pkg.mkdir()
    backend = EVIL_BACKEND.replace("SECRET_FILE", repr(str(secret_file))).replace("SPEC_DIR", repr(str(example.root)))
    (pkg / "setup.py").write_text(backend)
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    (example.root / "requirements.txt").write_text("--no-index\n./evilpkg\n")


def test_a_requirements_build_code_runs_unprivileged_with_no_operator_variable(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    secret_file = tmp_path / "operator-secret.txt"  # the operator's (root's) file, 0600
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    _with_evil_requirement(example, secret_file)

    built = example.ingot("build", "--json", extra_env=OPERATOR_ENV)
    assert built.code == 0, built.err

    [obj] = _stored_objects(example.state)
    report = json.loads((obj / ".ingot-deps" / "evilpkg" / "report.json").read_text())
    for name, value in OPERATOR_ENV.items():
        assert name not in report["environ"], name
        assert value not in json.dumps(report["environ"]), name
    environ = report["environ"]
    # Only the allow-list, and what pip itself sets for its build (its isolated env's PYTHONPATH, hooks).
    allowed = {"PATH", "HOME", "TMPDIR", "LANG", "SOURCE_DATE_EPOCH", "PYTHONNOUSERSITE", "PYTHONUNBUFFERED",
               "PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PWD",  # PWD: set by the shell that fences it
               # package managers pointed at the dependency cache (ingot.artifacts.caches)
               "XDG_CACHE_HOME", "YARN_CACHE_FOLDER", "BUNDLE_USER_CACHE", "GOMODCACHE", "GOCACHE",
               "NODE_EXTRA_CA_CERTS"}  # a CA bundle for the registry, passed where the operator sets one
    prefixes = ("PIP_", "PEP517_", "_PYPROJECT_", "npm_config_")
    assert {n for n in environ if n not in allowed and not n.startswith(prefixes)} == set()
    assert "INGOT_ACTOR" not in environ and "COLUMNS" not in environ
    operator_path = os.environ.get("PYTHONPATH")  # set where ingot runs from a checkout, not in CI
    if operator_path:
        assert operator_path not in environ.get("PYTHONPATH", ""), environ  # the operator's, not passed
    home = report["environ"]["HOME"]
    assert home.startswith(tempfile.gettempdir() + "/ingot-build-") and home != "/root"
    assert report["read_secret"][0] == "denied" and SECRET not in json.dumps(report)
    assert not (example.root / "pwned").exists()
    if ROOT:
        user = pwd.getpwnam(BUILD_USER)
        assert report["uid"] == report["euid"] == user.pw_uid != 0
        assert report["groups"] in ([], [user.pw_gid])
        assert report["read_shadow"][0] == "denied"
        assert report["write_spec_dir"][0] == "denied"
        assert report["no_new_privs"] == ["NoNewPrivs:\t1\n"]
        assert "python" not in report["pid1"] or "pip" in report["pid1"]  # its own PID namespace
        # root's home is hidden: nothing of it can be listed (at most the interpreter's path, mounted back)
        listed = report["list_root_home"]
        assert listed[0] == "denied" or set(listed[1]) <= {".pyenv"}, listed
        # The private copy: in a fresh directory only the build user can enter, gone after the build.
        assert report["work"] == [0o700, user.pw_uid]
    assert "/work/src/" in report["cwd"] and not Path(report["cwd"]).exists()  # the private copy, gone


def test_stored_artifacts_are_owner_only_and_read_only(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    (example.root / "run.sh").write_text("#!/bin/sh\n")
    (example.root / "run.sh").chmod(0o755)
    (example.root / "lib").mkdir()
    (example.root / "lib" / "x.py").write_text("")
    example.ingot("build", check=True)
    [obj] = _stored_objects(example.state)
    store = example.state / "artifacts"
    for directory in (store, store / "objects", store / "listings", store / "inputs", store / "tmp"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(obj.stat().st_mode) == 0o500
    assert stat.S_IMODE((obj / "lib").stat().st_mode) == 0o500
    assert stat.S_IMODE((obj / "app.py").stat().st_mode) == 0o400
    assert stat.S_IMODE((obj / "lib" / "x.py").stat().st_mode) == 0o400
    assert stat.S_IMODE((obj / "run.sh").stat().st_mode) == 0o500
    # ... and they still verify, rebuild over a damaged copy, and can be pruned away.
    assert example.ingot("build", "--rebuild", check=True).code == 0


@pytest.mark.parametrize(("link", "target"), [("shadow", "/etc/shadow"), ("lib/leak", "../../outside.txt"),
                                              ("lib/abs", "/tmp")])
def test_a_symlink_out_of_the_context_is_refused_naming_it(tmp_path: Path, link: str, target: str) -> None:
    example = make_example(tmp_path)
    (tmp_path / "outside.txt").write_text(SECRET)
    (example.root / "lib").mkdir()
    (example.root / link).symlink_to(target)
    result = example.ingot("build")
    assert result.code == 2, result
    assert "Traceback" not in result.err and "internal error" not in result.err
    assert str(example.root / link) in result.err and "symlink pointing out of the build context" in result.err
    assert f"{link} -> {target}" in result.err
    assert _stored_objects(example.state) == []


def test_a_symlink_that_stays_inside_is_kept_as_a_link(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    (example.root / "lib").mkdir()
    (example.root / "lib" / "alias.py").symlink_to("../app.py")
    (example.root / "here").symlink_to("lib/../lib")
    example.ingot("build", check=True)
    [obj] = _stored_objects(example.state)
    assert os.readlink(obj / "lib" / "alias.py") == "../app.py"
    assert os.readlink(obj / "here") == "lib/../lib"


def test_symlinks_are_resolved_through_the_trees_own_links() -> None:
    # `x/y/p -> ../../q` puts p at the top; `x/y/l -> p/../..` looks inside by its text and is not.
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "x" / "y").mkdir(parents=True)
        (root / "q").mkdir()
        (root / "x" / "y" / "p").symlink_to("../../q")
        (root / "x" / "y" / "l").symlink_to("p/../..")
        (root / "x" / "y" / "ok").symlink_to("p/../x")
        assert escaping_symlinks(root) == [("x/y/l", "p/../..")]


@pytest.mark.parametrize("build", ["..", "/etc", "../../.."])
def test_build_outside_the_spec_directory_is_refused(tmp_path: Path, build: str) -> None:
    example = make_example(tmp_path)
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("build: .", f"build: {build}"))
    result = example.ingot("build")
    assert result.code == 2, result
    assert "Traceback" not in result.err
    line = next(n for n, text in enumerate(spec.read_text().splitlines(), 1) if "build:" in text)
    assert f"ingot.yaml:{line}: services.web.build: {build!r} resolves to" in result.err, result.err
    assert str((example.root / build).resolve()) in result.err
    assert _stored_objects(example.state) == []


def test_an_environment_override_of_build_outside_is_refused_naming_its_key(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    spec = example.root / "ingot.yaml"
    spec.write_text(spec.read_text().replace("web: {replicas: 3,", "web: {build: /etc, replicas: 3,"))
    assert example.ingot("build", check=True).code == 0  # staging builds the spec's directory
    result = example.ingot("--env", "production", "build")
    assert result.code == 2, result
    assert "environments.production.services.web.build: '/etc' resolves to /etc" in result.err, result.err


def test_build_may_use_the_whole_git_repository_of_the_spec(tmp_path: Path) -> None:
    example = make_example(tmp_path)
    subprocess.run(["git", "init", "-q", str(example.root)], check=True)
    deploy = example.root / "deploy"
    deploy.mkdir()
    spec = (example.root / "ingot.yaml").read_text().replace("build: .", "build: ..")
    (deploy / "ingot.yaml").write_text(spec)
    (example.root / "ingot.yaml").unlink()
    result = example.ingot("-f", "deploy/ingot.yaml", "build")
    assert result.code == 0, result
    (deploy / "ingot.yaml").write_text(spec.replace("build: ..", "build: ../.."))
    outside = example.ingot("-f", "deploy/ingot.yaml", "build")
    assert outside.code == 2 and "(the git repository)" in outside.err, outside


# -- a directory swapped for a symlink while the context is copied ----------------------------------------


def _context_with_sub(tmp_path: Path) -> tuple[Path, Path]:
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "a.txt").write_text("a\n")
    (ctx / "sub" / "x.txt").write_text("inside\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_text(SECRET)
    return ctx, outside


def _swap(ctx: Path, outside: Path) -> None:
    os.rename(ctx / "sub", ctx / "sub.old")
    os.symlink(outside, ctx / "sub")


def test_a_directory_swapped_before_the_copy_reaches_it_is_refused(tmp_path: Path) -> None:
    ctx, outside = _context_with_sub(tmp_path)
    store = ArtifactStore(tmp_path / "store")

    def hook(rel: str) -> None:
        if rel == "a.txt":  # listed (and hashed) as a directory; the copy is about to reach it
            _swap(ctx, outside)

    with pytest.raises(UserInputError, match=r"ctx/sub: a symlink pointing out of the build context") as info:
        build_artifact(store, ctx, on_entry=hook)
    assert info.value.exit_code == 2
    assert store.list_digests() == []


def test_a_directory_swapped_while_the_copy_is_inside_it_gains_nothing(tmp_path: Path) -> None:
    ctx, outside = _context_with_sub(tmp_path)
    store = ArtifactStore(tmp_path / "store")
    swapped: list[str] = []

    def hook(rel: str) -> None:
        if rel == "sub/x.txt" and not swapped:  # the walk holds sub open: the path now leads outside
            _swap(ctx, outside)
            swapped.append(rel)

    result = build_artifact(store, ctx, on_entry=hook)
    assert swapped
    assert (result.path / "sub" / "x.txt").read_text() == "inside\n"
    _assert_no_secret_in(result.path)


def test_copy_tree_never_follows_a_symlink_it_finds(tmp_path: Path) -> None:
    ctx, outside = _context_with_sub(tmp_path)
    (ctx / "link").symlink_to(outside)
    dst = tmp_path / "dst"
    dst.mkdir()
    copy_tree(ctx, dst, what="a test copy")
    assert os.readlink(dst / "link") == str(outside)
    assert escaping_symlinks(dst) == [("link", str(outside))]
    _assert_no_secret_in(dst)


def test_a_racing_swapper_never_gets_outside_content_into_an_artifact(tmp_path: Path) -> None:
    """No hook: another process flips the directory and a symlink to outside as fast as it can."""
    example = make_example(tmp_path)
    sub = example.root / "sub"
    sub.mkdir()
    for i in range(200):
        (sub / f"f{i:03}.txt").write_text("inside\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(200):
        (outside / f"f{i:03}.txt").write_text(SECRET)
    swapper = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os
        sub, aside, outside = {str(sub)!r}, {str(sub) + '.real'!r}, {str(outside)!r}
        while True:
            os.rename(sub, aside); os.symlink(outside, sub)
            os.unlink(sub); os.rename(aside, sub)
    """)])
    try:
        for _ in range(3):
            result = example.ingot("build", "--rebuild")
            # Built from the real directory, or refused (the link seen, or an entry gone mid-copy).
            assert result.code in (0, 1, 2), result
            assert "Traceback" not in result.err, result.err
    finally:
        swapper.kill()
        swapper.wait()
    for obj in _stored_objects(example.state):
        _assert_no_secret_in(obj)


def test_the_build_environment_is_an_allow_list(tmp_path: Path) -> None:
    operator = {**OPERATOR_ENV, "PATH": "/root/bin:/usr/bin", "HOME": "/root", "PYTHONPATH": "/root/src",
                "PIP_CONFIG_FILE": "/root/pip.conf", "PIP_INDEX_URL": "https://mirror.example/simple",
                "https_proxy": "http://proxy.example:3128", "LANG": "de_DE.UTF-8", "SSH_AUTH_SOCK": "/tmp/agent"}
    env = build_env(operator, python="/opt/py/bin/python3", home=tmp_path / "home", tmp=tmp_path / "tmp")
    assert env["PATH"] == "/opt/py/bin:/usr/local/bin:/usr/bin:/bin"
    assert env["HOME"] == str(tmp_path / "home") and env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["PIP_INDEX_URL"] == "https://mirror.example/simple" and env["https_proxy"] == "http://proxy.example:3128"
    assert env["LANG"] == "de_DE.UTF-8"
    for name in (*OPERATOR_ENV, "PYTHONPATH", "PIP_CONFIG_FILE", "SSH_AUTH_SOCK"):
        assert name not in env, name
