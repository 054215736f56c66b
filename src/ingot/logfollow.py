"""`ingot logs SERVICE --follow`: the lines of a service's live instances as they are written.

It follows what the state says is live, looked at every RESCAN seconds: first each live instance's last
lines, then every new line. Across a deploy, the new release's instances join from their first line as
soon as they are started (a release that fails its gate shows why); the ones the deploy stops are read
to their end, then left, each with a notice. Lines of different instances interleave as they come, each
tagged with its instance. It reads the logs directly (files, or the container engine): no agent needed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ingot.runtimes.registry import Runtimes
from ingot.store import InstanceRow, Store
from ingot.store.repo import SPAWNING

# How often the state is read for instances that started or stopped.
RESCAN = 0.5


@dataclass(frozen=True)
class Line:
    instance: str
    text: str


@dataclass(frozen=True)
class Notice:
    """An instance joined or left: for the person watching, not part of any log."""

    text: str


@dataclass(frozen=True)
class _Ended:
    instance: str


class _Source:
    """One instance's log, read by a thread of its own (a container's stream blocks)."""

    def __init__(self, runtimes: Runtimes, row: InstanceRow, tail: int | None,
                 out: queue.Queue[Line | _Ended]) -> None:
        self.row, self.out, self.stop = row, out, threading.Event()
        self.runtime = runtimes.of(row)
        self.tail = tail
        threading.Thread(target=self._pump, name=f"follow {row.id}", daemon=True).start()

    def _pump(self) -> None:
        try:
            for text in self.runtime.follow_log(self.row, self.tail, self.stop):
                self.out.put(Line(self.row.id, text))
        except Exception as exc:  # an engine that went away: say so, and follow the others
            self.out.put(Line(self.row.id, f"[ingot: following this log failed: {exc}]"))
        finally:
            self.out.put(_Ended(self.row.id))


def follow(store: Store, environment: str, service: str, lines: int,
           rescan: float = RESCAN) -> Iterator[Line | Notice]:
    """Every line of `service`'s live instances in `environment` from their last `lines` on, until the
    caller stops iterating (Ctrl-C). Never ends by itself: no instance yet is waited for."""
    runtimes = Runtimes()
    out: queue.Queue[Line | _Ended] = queue.Queue()
    sources: dict[str, _Source] = {}
    done: set[str] = set()  # followed to their end: never again (a restarted stream would repeat them)
    first = True
    try:
        while True:
            live = {r.id: r for r in store.live_instances(environment, service, mine=True) if r.state != SPAWNING}
            if first and not live:
                yield Notice(f"{service} has no running instances in {environment}; waiting for some")
            for instance_id, row in live.items():
                if instance_id not in sources and instance_id not in done:
                    if not first:
                        yield Notice(f"{instance_id} started (release {row.release_id}); following it")
                    sources[instance_id] = _Source(runtimes, row, lines if first else None, out)
            for instance_id, source in sources.items():
                if instance_id not in live:
                    source.stop.set()  # a process log is read to its end; a container's stream ends itself
            first = False
            until = time.monotonic() + rescan
            while (left := until - time.monotonic()) > 0:
                try:
                    item = out.get(timeout=left)
                except queue.Empty:
                    break
                if isinstance(item, _Ended):
                    sources.pop(item.instance, None)
                    done.add(item.instance)
                    yield Notice(f"{item.instance} stopped; its log ends here")
                else:
                    yield item
    finally:
        for source in sources.values():
            source.stop.set()
