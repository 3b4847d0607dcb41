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
reset, which ``rate()`` handles).
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


@dataclass(frozen=True)
class WorkerSlot:
    """Which worker this process is, and where the workers leave their metrics."""

    index: int
    shared_dir: str


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
        self._path = self._dir / f"{slot.index}.json"

    def _own(self) -> dict[str, list[str]]:
        return {
            name: lines
            for name, lines in self.registry.families()
            if not name.startswith(FLEET_PREFIX)
        }

    async def flush(self) -> None:
        partial = self._path.with_suffix(".tmp")
        partial.write_text(json.dumps(self._own()))
        os.replace(partial, self._path)  # readers never see half a file

    async def stop(self) -> None:
        await super().stop()
        self._path.unlink(missing_ok=True)

    def _others(self) -> dict[int, dict[str, list[str]]]:
        now = time.time()
        found: dict[int, dict[str, list[str]]] = {}
        for path in self._dir.glob("*.json"):
            if path == self._path or not path.stem.isdigit():
                continue
            try:
                if now - path.stat().st_mtime > STALE_S:
                    continue
                found[int(path.stem)] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:  # a worker replacing its file, or gone
                log.debug("skipping %s: %s", path, exc)
        return dict(sorted(found.items()))

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
        return "\n".join(lines) + "\n"
