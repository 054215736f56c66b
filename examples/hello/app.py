"""The bundled example service: answers / with its version and /healthz with ok.

Change VERSION (or anything else here) and run `ingot deploy` again: a new release is built and
replaces the old one with zero failed requests.
"""

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "1"
GREETING = os.environ.get("GREETING", "hello")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the router can reuse connections
    # A buffered writer sends the head and the body in one write (http.server flushes it once the
    # response is done), so an instance killed with -9 dies between two responses, never in the middle
    # of one (a head without its body is lost on any router), and Nagle never holds a body back
    # waiting for the ACK of its head (about 40 ms per request on a kept-alive connection).
    wbufsize = -1
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
            return
        body = {
            "greeting": GREETING,
            "version": VERSION,
            "release": os.environ.get("INGOT_RELEASE", "-"),
            "instance": os.environ.get("INGOT_INSTANCE", "-"),
        }
        self._send(200, (json.dumps(body) + "\n").encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        if self.path != "/healthz":
            sys.stderr.write("%s %s\n" % (self.address_string(), format % args))


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    host = os.environ.get("HOST", "127.0.0.1")  # in a container: 0.0.0.0, for the published port
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True

    def stop(_signum: int, _frame: object) -> None:
        # Stop accepting, let requests in flight finish, then exit.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"hello v{VERSION} listening on {host}:{port}", flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()


if __name__ == "__main__":
    main()
