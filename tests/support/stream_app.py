"""A test app with long-lived connections, standard library only (instances run it with any python).

/        its version as JSON (like the example app), with when it began and finished answering (after
         sleeping `sleep` seconds, query), /healthz ok
/ws      a WebSocket echo: each text message comes back as "<VERSION>:<message>"; a close is answered;
         with `?stall=1` it first sends the start of a frame and never the rest
/events  server-sent events, `data: <VERSION> <i>` every `every` seconds (query), `n` of them (default:
         until the client leaves); chunked, or close-delimited with `?close=1`

Run as `python stream_app.py` with PORT (and HOST) in the environment, as ingot runs an instance.
"""

import base64
import hashlib
import json
import os
import signal
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

VERSION = "1"
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes) -> bytes:
    """A server frame (unmasked), final."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        elif url.path == "/ws":
            self._websocket(stall=bool(parse_qs(url.query).get("stall")))
        elif url.path == "/events":
            query = parse_qs(url.query)
            self._events(float(query.get("every", ["0.2"])[0]), int(query.get("n", ["0"])[0]),
                         bool(query.get("close")))
        else:
            started = time.time()
            time.sleep(float(parse_qs(url.query).get("sleep", ["0"])[0]))
            body = {"version": VERSION, "release": os.environ.get("INGOT_RELEASE", "-"), "started": started,
                    "finished": time.time()}
            self._send(200, (json.dumps(body) + "\n").encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _websocket(self, stall: bool = False) -> None:
        key = self.headers.get("Sec-WebSocket-Key")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            self._send(400, b"not a websocket request\n", "text/plain")
            return
        accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        if stall:
            self.wfile.write(frame(1, b"x" * 100)[:12])
            self.wfile.flush()
        read = self.rfile.read
        while True:
            head = read(2)
            if len(head) < 2:
                return
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", read(8))[0]
            mask = read(4) if head[1] & 0x80 else b""
            data = read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 8:
                self.wfile.write(frame(8, data[:2]))
                return
            if opcode == 9:
                self.wfile.write(frame(10, data))
            elif opcode == 1:
                self.wfile.write(frame(1, f"{VERSION}:".encode() + data))

    def _events(self, every: float, n: int, close: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        i = 0
        try:
            while not n or i < n:
                i += 1
                event = f"id: {i}\ndata: {VERSION} {i} {time.time():.3f}\n\n".encode()
                self.wfile.write(event if close else b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                time.sleep(every)
            if not close:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        if self.path != "/healthz":
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    host = os.environ.get("HOST", "127.0.0.1")
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"stream app v{VERSION} listening on {host}:{port}", flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()


if __name__ == "__main__":
    main()
