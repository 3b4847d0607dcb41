"""The fleet's recent routing decisions: a capped Redis list every replica writes to and
every dashboard reads, so all replicas show the same history.

Writing is off the request path: a decision is appended to a bounded local deque (O(1));
a background task pushes what accumulated every ``flush_interval_s`` with one pipelined
``LPUSH`` + ``LTRIM``. Only the newest ``keep`` entries can survive the trim, so the local
buffer never needs to hold more than that either.
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
        self._pending: deque[dict[str, Any]] = deque(maxlen=keep)

    def record(self, entry: dict[str, Any]) -> None:
        self._pending.append(entry)

    async def flush(self) -> None:
        if not self._pending:
            return
        batch = [orjson.dumps(e) for e in self._pending]
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
