"""``/metrics`` of every ``serve --workers`` process, from whichever one takes the scrape.

The workers share one port, so a scrape reaches one of them; alone, its counters would
jump between workers' values from scrape to scrape, which Prometheus reads as resets.
Instead each worker writes its own series to a file in a directory its supervisor made
(once a second, off the request path), and the worker that answers a scrape exports its
own series fresh plus every other worker's latest, each labelled ``worker="N"``. The
fleet-wide series are read from Redis at scrape time and are the same on every worker:
they are exported once, without the label.

A drained worker removes its file; a killed one's file is left out once it is older than
``STALE_S``; its replacement writes under the same number, starting from zero (a counter
reset, which ``rate()`` handles). Each start of a number is a new *generation* with a file
of its own, so a worker being replaced (on SIGHUP) and its successor never write, or
remove, each other's file; a scrape shows the newest generation of every number.

The supervisor's own counters (why it started workers again) are in one more file, which
it rewrites when a count changes; they carry their ``worker`` label already.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from llm_router.observability.metrics import Registry
from llm_router.observability.periodic import PeriodicFlush

log = logging.getLogger(__name__)

#: Families read from Redis at scrape time: identical on every worker, exported once.
FLEET_PREFIX = "llm_router_fleet_"
PUBLISH_S = 1.0
STALE_S = 10.0


SUPERVISOR_FILE = "supervisor.json"
#: Why the supervisor started a worker again.
RESTART_REASONS = ("exited", "hung", "reload")


@dataclass(frozen=True)
class WorkerSlot:
    """Which worker this process is, and where the workers leave their metrics."""

    index: int
    shared_dir: str
    #: How many times this number was started before (``WorkerMetrics`` file names).
    generation: int = 0


def _slot_of(path: Path) -> tuple[int, int] | None:
    """``3.2.json`` → (3, 2): worker number and generation; None for any other file."""
    index, _, generation = path.stem.partition(".")
    if not (index.isdigit() and generation.isdigit()):
        return None
    return int(index), int(generation)


def with_worker_label(sample: str, worker: int) -> str:
    """``name{a="b"} 1`` → ``name{worker="N",a="b"} 1``; ``name 1`` → ``name{worker="N"} 1``."""
    cut = min(i for i in (sample.find("{"), sample.find(" ")) if i >= 0)
    label = f'worker="{worker}"'
    if sample[cut] == "{":
        rest = sample[cut + 1 :]
        return f"{sample[: cut + 1]}{label}{'' if rest.startswith('}') else ','}{rest}"
    return f"{sample[:cut]}{{{label}}}{sample[cut:]}"


class WorkerMetrics(PeriodicFlush):
    def __init__(self, slot: WorkerSlot, registry: Registry) -> None:
        super().__init__(f"worker {slot.index} metrics", PUBLISH_S)
        self.slot = slot
        self.registry = registry
        self._dir = Path(slot.shared_dir)
        self._path = self._dir / f"{slot.index}.{slot.generation}.json"

    def _own(self) -> dict[str, list[str]]:
        return {
            name: lines
            for name, lines in self.registry.families()
            if not name.startswith(FLEET_PREFIX)
        }

    async def flush(self) -> None:
        _write_whole(self._path, self._own())

    async def stop(self) -> None:
        await super().stop()
        self._path.unlink(missing_ok=True)

    def _others(self) -> dict[int, dict[str, list[str]]]:
        """The newest generation of every other worker number, unless it is stale."""
        now = time.time()
        newest: dict[int, tuple[int, Path]] = {}
        for path in self._dir.glob("*.json"):
            slot = _slot_of(path)
            if slot is None or slot[0] == self.slot.index:
                continue  # this number is this process (or the one it replaces)
            if slot[0] not in newest or slot[1] > newest[slot[0]][0]:
                newest[slot[0]] = (slot[1], path)
        found: dict[int, dict[str, list[str]]] = {}
        for index, (_, path) in newest.items():
            try:
                if now - path.stat().st_mtime > STALE_S:
                    continue
                found[index] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:  # a worker replacing its file, or gone
                log.debug("skipping %s: %s", path, exc)
        return dict(sorted(found.items()))

    def _supervisor(self) -> list[str]:
        try:
            families: dict[str, list[str]] = json.loads((self._dir / SUPERVISOR_FILE).read_text())
        except (OSError, ValueError) as exc:  # not written yet (a supervisor in a test)
            log.debug("no supervisor metrics: %s", exc)
            return []
        return [line for family in families.values() for line in family]

    def render(self) -> str:
        """Every family once: its header, then each worker's samples (this one's fresh)."""
        others = self._others()
        lines: list[str] = []
        for name, family in self.registry.families():
            if name.startswith(FLEET_PREFIX):
                lines += family
                continue
            header, samples = family[:2], family[2:]
            lines += header
            lines += [with_worker_label(s, self.slot.index) for s in samples]
            for index, theirs in others.items():
                lines += [with_worker_label(s, index) for s in theirs.get(name, [])[2:]]
        lines += self._supervisor()
        return "\n".join(lines) + "\n"


class SupervisorMetrics:
    """The supervisor's counters, left in the shared directory for the workers' scrapes.

    Rewritten at every change only: the supervisor lives exactly as long as its workers, so
    this file is never stale while a worker reads it.
    """

    def __init__(self, shared_dir: str, workers: int) -> None:
        self.registry = Registry()
        self.restarts = self.registry.counter(
            "llm_router_worker_restarts_total",
            "worker processes started again by the supervisor: after an exit, after it was "
            "killed for a stuck event loop (hung), or to reload (SIGHUP)",
            ("worker", "reason"),
        )
        # Every series from zero, so the first restart is an increase and not a new series.
        for index in range(1, workers + 1):
            for reason in RESTART_REASONS:
                self.restarts.inc(str(index), reason, amount=0)
        self._path = Path(shared_dir) / SUPERVISOR_FILE
        self.publish()

    def count(self, index: int, reason: str) -> None:
        self.restarts.inc(str(index), reason)
        self.publish()

    def publish(self) -> None:
        _write_whole(self._path, dict(self.registry.families()))


def _write_whole(path: Path, families: dict[str, list[str]]) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(families))
    os.replace(partial, path)  # readers never see half a file
