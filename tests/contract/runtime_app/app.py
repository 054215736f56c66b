"""The runtime contract's instance: the same file runs as a process and in a container.

Environment: PORT (listen there), CONTRACT_ON_TERM=ignore (ignore SIGTERM; default: say so and exit 0),
CONTRACT_EXIT_AT_ONCE=N (print a line, exit N before listening). Paths: /healthz, /env (its whole
environment), /whoami (uid, gid), /spew?lines=N (prints N lines of about 90 bytes), /exit?code=N
(answers, then exits N), /note?text=T (appends T to the file `notes` of its volume `data`, whose path is in
INGOT_VOLUME_DATA, and answers every note in it).
"""

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

instance = os.environ.get("INGOT_INSTANCE", "?")
if os.environ.get("CONTRACT_EXIT_AT_ONCE"):
    print(f"contract app {instance} dying at once", file=sys.stderr, flush=True)
    sys.exit(int(os.environ["CONTRACT_EXIT_AT_ONCE"]))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        code = None
        if url.path == "/healthz":
            body = {"ok": True}
        elif url.path == "/env":
            body = dict(os.environ)
        elif url.path == "/whoami":
            body = {"uid": os.getuid(), "gid": os.getgid()}
        elif url.path == "/spew":
            lines = int(parse_qs(url.query)["lines"][0])
            for number in range(lines):
                print(f"contract app {instance} spews line {number:08d} " + "x" * 60)
            sys.stdout.flush()
            body = {"spewed": lines}
        elif url.path == "/note":
            notes = os.path.join(os.environ["INGOT_VOLUME_DATA"], "notes")
            with open(notes, "a") as handle:
                handle.write(parse_qs(url.query)["text"][0] + "\n")
            with open(notes) as handle:
                body = {"notes": handle.read().split()}
        elif url.path == "/exit":
            code = int(parse_qs(url.query)["code"][0])
            body = {"exiting": code}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        if code is not None:
            print(f"contract app {instance} exiting with {code} as asked", flush=True)
            os._exit(code)

    def log_message(self, format, *args):
        pass


def graceful(*_):
    print(f"contract app {instance} stopping gracefully", flush=True)
    threading.Thread(target=server.shutdown).start()


server = ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler)
signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("CONTRACT_ON_TERM") == "ignore" else graceful)
print(f"contract app {instance} says hello on stdout", flush=True)
print(f"contract app {instance} says hello on stderr", file=sys.stderr, flush=True)
server.serve_forever()
