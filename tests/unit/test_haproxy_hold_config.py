"""The hold's part of a generated haproxy configuration (strategy.hold), and a haproxy without Lua."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from ingot.errors import OperationFailed
from ingot.routers.haproxy import HAProxyRouter
from ingot.routers.haproxy_config import Timeouts, haproxy_has_lua, render_config, write_hold_files


def config(tmp_path: Path, hold: bool) -> str:
    for name in ("servers.map", "maint.map"):
        (tmp_path / name).write_text("")
    if hold:
        write_hold_files(tmp_path / "hold.map")
    return render_config(name="t", socket_path=tmp_path / "admin.sock", listen_fd=3, maxconn=100,
                         timeouts=Timeouts(), servers_map=tmp_path / "servers.map",
                         maintenance_map=tmp_path / "maint.map", hold_map=tmp_path / "hold.map" if hold else None)


def test_the_hold_is_a_lua_action_run_only_while_the_backend_has_an_entry(tmp_path: Path) -> None:
    text = config(tmp_path, hold=True)
    assert f"    lua-load {tmp_path}/hold.lua" in text
    assert f"    http-request lua.ingot_hold if {{ be_name,map({tmp_path}/hold.map) -m found }}" in text
    lua = (tmp_path / "hold.lua").read_text()
    assert f'Map.new("{tmp_path}/hold.map", Map._str)' in lua and "core.msleep(5)" in lua
    bare = config(tmp_path, hold=False)
    assert "lua-load" not in bare and "lua." not in bare and "hold.map" not in bare  # without Lua: none of it


def test_haproxy_accepts_the_configuration_with_the_hold(tmp_path: Path) -> None:
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if binary is None or not haproxy_has_lua(binary):
        pytest.skip("no haproxy with Lua here (tests/haproxy/ provisions it)")
    text = config(tmp_path, hold=True).replace("bind fd@3", "bind 127.0.0.1:22999")  # only checked
    (tmp_path / "haproxy.cfg").write_text(text)
    checked = subprocess.run([binary, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_haproxy_without_lua_cannot_hold(tmp_path: Path) -> None:
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\necho 'HAProxy version 2.6'\necho '  OPTIONS = USE_PCRE2=1 USE_OPENSSL=1'\n")
    fake.chmod(0o755)
    assert not haproxy_has_lua(str(fake))
    assert not haproxy_has_lua(str(tmp_path / "missing"))
    router = HAProxyRouter(("127.0.0.1", 0), workdir=tmp_path / "w", haproxy=str(fake))
    assert not router.holds
    with pytest.raises(OperationFailed, match="built without Lua"):
        asyncio.run(router.hold(1.0))
