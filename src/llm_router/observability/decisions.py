"""The fleet's recent routing decisions: a capped Redis list every replica writes to and
every dashboard reads, so all replicas show the same history.

Writing is off the request path: a decision is appended to a bounded local deque (O(1)) as
a tuple of the request's facts; a background task turns what accumulated into entries and
pushes them every ``flush_interval_s`` with one pipelined ``LPUSH`` + ``LTRIM``. Only the
newest ``keep`` entries can survive the trim, so the local buffer never holds more than
that, and an entry the trim would drop is never built.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import Any

import orjson

from llm_router.observability.metrics import Counter
from llm_router.observability.periodic import PeriodicFlush
from llm_router.state.scripts import STORE_DOWN_ERRORS

log = logging.getLogger(__name__)

DEFAULT_KEEP = 200

#: One request as the request path records it: ``(ts, replica, request_id, model, node,
#: status, outcome, attempts, affinity, queue_ms, duration_s)``, wall-clock ``ts`` in
#: seconds, "" for no node or no affinity.
Decision = tuple[float, str, str, str, str, int, str, int, str, float, float]


def request_fields(
    request_id: str,
    model: str,
    node: str,
    status: int,
    outcome: str,
    attempts: int,
    affinity: str,
    queue_ms: float,
    duration_s: float,
) -> dict[str, Any]:
    """What the decision list and the access log say of a request, in this order."""
    return {
        "request_id": request_id,
        "model": model,
        "node": node or None,
        "status": status,
        "outcome": outcome,
        "attempts": attempts,
        "reason": f"affinity:{affinity}" if affinity else "least_loaded",
        "queue_wait_ms": round(queue_ms, 1),
        "duration_ms": round(duration_s * 1000, 2),
    }


def decision_entry(row: Decision) -> dict[str, Any]:
    ts, replica, *facts = row
    return {"ts": round(ts, 3), "replica": replica, **request_fields(*facts)}  # type: ignore[arg-type]


class DecisionLog(PeriodicFlush):
    def __init__(
        self,
        redis: Any,
        key: str,
        dropped: Counter,
        *,
        keep: int = DEFAULT_KEEP,
        flush_interval_s: float = 0.5,
    ) -> None:
        super().__init__("recent decisions", flush_interval_s)
        self._redis = redis
        self._key = key
        self._dropped = dropped
        self.keep = keep
        self._pending: deque[Decision] = deque(maxlen=keep)

    def record(self, row: Decision) -> None:
        self._pending.append(row)

    async def flush(self) -> None:
        if not self._pending:
            return
        batch = [orjson.dumps(decision_entry(row)) for row in self._pending]
        self._pending.clear()
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(self._key, *batch)
        pipe.ltrim(self._key, 0, self.keep - 1)
        try:
            await pipe.execute()
        except STORE_DOWN_ERRORS as exc:
            self._dropped.inc(amount=len(batch))
            log.debug("recent decisions not written: %s", exc)

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        raw = await self._redis.lrange(self._key, 0, max(0, min(limit, self.keep) - 1))
        out = []
        for item in raw:
            with contextlib.suppress(orjson.JSONDecodeError):
                value = orjson.loads(item)
                if isinstance(value, dict):
                    out.append(value)
        return out
