"""`python -m ingot.edge serve [--home DIR] [--persistent]`: the edge process (what the supervisor runs).

argparse rather than the Typer CLI: the edge starts again in well under a second after a crash. The
server and both routers are imported here, at module level, so that the supervisor (which imports this
module once) forks each new edge with them loaded: a restart costs the edge's own recovery only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ingot.edge.home import EdgeHome
from ingot.edge.server import run_edge
from ingot.errors import IngotError
from ingot.paths import private_umask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingot.edge")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the edge in the foreground")
    serve.add_argument("--home", type=Path, default=None, help="its state directory (default: $INGOT_EDGE_HOME)")
    serve.add_argument("--persistent", action="store_true", help="keep running with no router (systemd)")
    args = parser.parse_args(argv)
    private_umask()  # its state, maps and sockets are root's alone
    home = EdgeHome(args.home.resolve()) if args.home else EdgeHome.default()
    try:
        run_edge(home, persistent=args.persistent)
    except IngotError as exc:
        print(f"error: {exc.message}", *exc.details, sep="\n  ", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
