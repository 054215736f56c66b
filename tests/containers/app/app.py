"""The test service: answers `/` with its version, `/healthz`, and a few probes for the tests.

It handles SIGTERM as an instance should: stop serving, exit 0. It writes one line per request to
stdout and its start to stderr, so log tails have both streams.
"""

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PROC_STATUS_KEYS = ("NoNewPrivs", "CapEff", "CapPrm", "CapBnd")


def can_write(path):
    try:
        with open(path, "w") as handle:
            handle.write("written by the test app\n")
        return True
    except OSError:
        return False


def proc_status():
    with open("/proc/self/status") as handle:
        pairs = (line.split(":", 1) for line in handle if ":" in line)
        return {key: value.strip() for key, value in pairs if key in PROC_STATUS_KEYS}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/":
            body = {key: os.environ.get(name) for key, name in (
                ("version", "APP_VERSION"), ("release", "INGOT_RELEASE"), ("instance", "INGOT_INSTANCE"),
                ("service", "INGOT_SERVICE"), ("environment", "INGOT_ENVIRONMENT"), ("port", "PORT"))}
        elif url.path == "/healthz":
            body = {"ok": True}
        elif url.path == "/selfcheck":
            body = {"root_writable": can_write("/ingot-probe"), "tmp_writable": can_write("/tmp/ingot-probe"),
                    "status": proc_status()}
        elif url.path == "/write":
            body = {"written": can_write(parse_qs(url.query)["path"][0])}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        print("request " + format % args, flush=True)


server = ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler)
# shutdown() waits for serve_forever() to return, so it must not run on the thread serving.
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
print(f"test app {os.environ.get('APP_VERSION')} starting", file=sys.stderr, flush=True)
print(f"listening on {server.server_address[1]}", flush=True)
server.serve_forever()
print("stopped on SIGTERM", flush=True)
