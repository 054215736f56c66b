"""An instance that attacks on request: GET /read?path=P opens P (a file, a directory to list, a socket to
connect to) and answers what happened, errno included. GET /me says who it is and what its secret hashes to.
Standard library only, as an artifact with no dependencies."""

import errno
import hashlib
import json
import os
import socket
import stat
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def attempt(path: str) -> dict[str, object]:
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            return {"ok": True, "entries": len(os.listdir(path))}
        if stat.S_ISSOCK(mode):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(path)
            return {"ok": True, "connected": True}
        with open(path, "rb") as handle:
            return {"ok": True, "bytes": len(handle.read(4096))}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno, "name": errno.errorcode.get(exc.errno or 0, "?"),
                "type": type(exc).__name__}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/healthz":
            body: object = "ok"
        elif url.path == "/read":
            body = attempt(parse_qs(url.query)["path"][0])
        else:
            body = {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "groups": os.getgroups(),
                    "secret_sha256": hashlib.sha256(os.environ.get("API_KEY", "").encode()).hexdigest(),
                    "own_environ": attempt("/proc/self/environ"), "cwd": os.getcwd()}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
print(f"probe listening on {server.server_address[1]} as uid {os.getuid()}", flush=True)
server.serve_forever(poll_interval=0.05)
