"""A buffer that a background task pushes to Redis every ``interval_s``, and once more on
stop, so a replica shutting down cleanly loses nothing it had buffered."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


class PeriodicFlush:
    def __init__(self, name: str, interval_s: float) -> None:
        self._name = name
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def flush(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("%s flush failed: %s", self._name, exc)
