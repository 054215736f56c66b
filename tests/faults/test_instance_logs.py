"""Instance logs are capped and rotated: an app that writes a lot keeps serving and writing, its log stays
within its cap, and `ingot logs` still shows the newest lines."""

from __future__ import annotations

from pathlib import Path

from tests.support.harness import ExampleProject, load, poll

MAX_BYTES = 200_000
CHUNK = 64 * 1024  # the logger writes whole lines of at most one read past the cap
LINES = 40_000  # about 4 MB each, twenty times the cap


def chatty(example: ExampleProject) -> None:
    """At start the app writes LINES numbered lines (while it serves), then says it is done."""
    app = example.root / "app.py"
    serve = "    server.serve_forever(poll_interval=0.05)\n"
    assert serve in app.read_text()
    app.write_text(app.read_text().replace(serve, (
        "    def chatter() -> None:\n"
        f"        for i in range({LINES}):\n"
        "            sys.stdout.write(f'line {i:06d} ' + 'x' * 88 + '\\n')  # one write: whole lines\n"
        "        print('finished writing', flush=True)\n"
        "    threading.Thread(target=chatter, daemon=True).start()\n" + serve)))


def test_an_app_that_writes_a_lot_stays_within_its_log_cap(example: ExampleProject, tmp_path: Path) -> None:
    example.env["INGOT_LOG_MAX_BYTES"] = str(MAX_BYTES)
    chatty(example)
    example.ingot("deploy", check=True)
    logs = poll(lambda: (out := example.ingot("logs", "web", "-n", "3", check=True).out).count(
        "finished writing") == 2 and out, timeout=120, interval=0.5, what="both instances to finish writing")
    with load(example.url, tmp_path) as during:
        # Rotated, and still written to: the requests served now are logged after the burst.
        poll(lambda: example.ingot("logs", "web", "-n", "400", check=True).out.count('"GET / HTTP/1.1" 200') > 100,
             timeout=30, what="request lines logged after the rotation")
    assert during["failures"] == [] and int(during["requests"]) > 50
    directory = example.state / "logs" / "staging" / "web"
    instances = {p.name.split(".log")[0] for p in directory.iterdir()}
    assert len(instances) == 2
    for instance in instances:
        files = sorted(p.name for p in directory.iterdir() if p.name.startswith(instance))
        assert files == [f"{instance}.log", f"{instance}.log.1", f"{instance}.log.2"], files
        sizes = [(directory / name).stat().st_size for name in files]
        assert all(size <= MAX_BYTES + CHUNK for size in sizes), sizes
        # What is kept is the newest output, whole lines in order, across the rotated files.
        text = "".join((directory / name).read_text() for name in reversed(files))
        numbered = [int(line[5:11]) for line in text.splitlines() if line.startswith("line ")]
        assert numbered and numbered[-1] == LINES - 1
        assert numbered == list(range(numbered[0], LINES)), "lines lost or split inside what is kept"
    assert "finished writing" in logs
