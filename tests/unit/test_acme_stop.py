"""An edge told to stop while its ACME server hangs exits at once: the certificate manager's calls run in
daemon threads, not the default executor, whose threads the process would wait for (up to the 90 s client
timeout) before exiting."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import asyncio, sys
from pathlib import Path
from ingot.edge.tls.manager import CertificateManager

async def main():
    async def install(host, cert, key):
        pass
    manager = CertificateManager(Path(sys.argv[1]), challenges={}, install=install,
                                 directory=f"https://127.0.0.1:{sys.argv[2]}/dir", acme_timeout=60)
    await manager.hosts_changed(None, {"hang.test"})
    await asyncio.sleep(0.5)  # the account request is sent, and never answered
    await manager.stop()

asyncio.run(main())
"""


def test_a_stopped_manager_does_not_wait_for_a_hanging_acme_server(tmp_path: Path) -> None:
    with socket.socket() as hole:  # accepts connections (the backlog) and never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(hole.getsockname()[1])],
                              capture_output=True, text=True, timeout=30)
        took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert took < 10, f"the process took {took:.1f}s to exit"
