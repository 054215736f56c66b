"""`ingot logs SERVICE --follow`: the live instances' last lines, then each new one, across a deploy (the new
release's instances join, the old ones leave with a notice), until Ctrl-C, which exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import httpx

from tests.support.harness import ExampleProject, poll


class Follower:
    """`ingot logs web --follow` running, its stdout and stderr lines collected as they come."""

    def __init__(self, example: ExampleProject, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "INGOT_HOME"} | example.env
        self.proc = subprocess.Popen([sys.executable, "-m", "ingot", "logs", "web", *args], cwd=example.root,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, i=into: i.extend(iter(s.readline, "")), daemon=True).start()

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.out)


def test_follow_streams_across_a_deploy_and_ends_on_ctrl_c(example: ExampleProject) -> None:
    follow_across_a_deploy(example)


def follow_across_a_deploy(example: ExampleProject) -> None:
    """The test, for each runtime (tests/containers runs it on containers)."""
    example.ingot("deploy", check=True)
    old = {i["id"] for i in example.ingot("status", "--json", check=True).json["services"][0]["instances"]}
    follower = Follower(example, "--follow", "-n", "5")
    try:
        # The last lines first: each instance said where it listens.
        poll(lambda: sum(follower.saw(f"{i} | hello v1 listening") for i in old) == 2, timeout=30,
             what="each instance's last lines")
        httpx.get(example.url + "first", timeout=5, trust_env=False)
        poll(lambda: follower.saw('"GET /first HTTP/1.1" 200'), timeout=10, what="a new line, as it is written")
        example.set_version("2")
        example.ingot("deploy", check=True)
        new = {i["id"] for i in example.ingot("status", "--json", check=True).json["services"][0]["instances"]}
        assert new.isdisjoint(old)
        poll(lambda: sum(follower.saw(f"{i} | hello v2 listening") for i in new) == 2, timeout=30,
             what="the new release's instances joining from their first line")
        poll(lambda: all(any(f"{i} stopped" in line for line in follower.err) for i in old), timeout=30,
             what="the old instances leaving with a notice")
        httpx.get(example.url + "second", timeout=5, trust_env=False)
        poll(lambda: any(line.split(" | ")[0] in new and '"GET /second HTTP/1.1" 200' in line
                         for line in follower.out), timeout=10, what="the new instances' lines")
        assert follower.proc.poll() is None  # following does not end by itself
    finally:
        follower.proc.send_signal(signal.SIGINT)
        code = follower.proc.wait(timeout=20)
    assert code == 0 and not any("Traceback" in line for line in follower.err), follower.err
    # Without --follow the output is as it was: headers, then the lines.
    plain = example.ingot("logs", "web", "-n", "1", check=True).out
    assert plain.startswith("==> web-") and " | " not in plain
