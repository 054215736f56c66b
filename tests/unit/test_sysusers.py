"""System user names and creation (creation only as root; the user made here is removed again)."""

from __future__ import annotations

import os
import pwd

import pytest

from ingot.sysusers import MAX_NAME, ensure_system_user, remove_system_user, user_name


def test_names_are_deterministic_short_and_distinct() -> None:
    assert user_name("hello", "web") == user_name("hello", "web")
    assert user_name("hello", "web").startswith("ingot-hello-web-")
    # A hyphen moved between project and service is another service, so another user.
    assert user_name("a-b", "c") != user_name("a", "b-c")
    long = user_name("p" * 40, "s" * 40)
    assert len(long) <= MAX_NAME
    assert user_name("p" * 40, "s" * 39) != long


@pytest.mark.skipif(os.geteuid() != 0, reason="only root creates system users")
def test_a_system_user_is_made_once_with_no_login() -> None:
    name = user_name("ingot-test", os.urandom(4).hex())
    try:
        uid, gid = ensure_system_user(name)
        assert (uid, gid) == ensure_system_user(name)  # found the second time, not made again
        entry = pwd.getpwnam(name)
        assert uid != 0 and gid != 0
        assert entry.pw_shell.endswith("nologin") or entry.pw_shell == "/bin/false"
        assert not os.path.exists(entry.pw_dir)
    finally:
        assert remove_system_user(name)
