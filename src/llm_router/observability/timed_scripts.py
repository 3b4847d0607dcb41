"""``FleetScripts`` that time every script call and count its failures.

The scripts are the router's only Redis traffic on the request path, so timing them at
the one place they are invoked covers the hot path without touching each caller.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from llm_router.observability.metrics import HistogramChild
from llm_router.observability.router_metrics import RouterMetrics
from llm_router.state.keys import Keys
from llm_router.state.multiplex import MultiplexedRedis
from llm_router.state.scripts import FleetScripts


class TimedScripts(FleetScripts):
    def __init__(
        self,
        redis: Any,
        keys: Keys,
        metrics: RouterMetrics,
        fast: MultiplexedRedis | None = None,
    ) -> None:
        super().__init__(redis, keys, fast)
        self._seconds = metrics.redis_seconds
        self._errors = metrics.redis_errors
        #: Each script's histogram child, resolved at its first call: a call then observes
        #: without packing and looking up its label tuple.
        self._timings: dict[str, HistogramChild] = {}

    async def _call(self, name: str, *args: str | int | float) -> Any:
        started = perf_counter()
        try:
            return await super()._call(name, *args)
        except Exception:
            self._errors.inc(name)
            raise
        finally:
            timing = self._timings.get(name)
            if timing is None:
                timing = self._timings[name] = self._seconds.child(name)
            timing.observe(perf_counter() - started)
