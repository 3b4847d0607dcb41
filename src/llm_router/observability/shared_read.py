"""A Redis read that many concurrent callers share and that is cached for a short while.

Dashboards and scrapers may hit a replica at any rate; each view they need costs Redis at
most one read per ``ttl_s`` per replica, and callers arriving during a read await that read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedRead(Generic[T]):
    def __init__(self, read: Callable[[], Awaitable[T]], ttl_s: float) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._cached: T | None = None
        self._cached_at = 0.0
        self._inflight: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self._cached is not None and time.monotonic() - self._cached_at < self._ttl_s:
            return self._cached
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        self._inflight = asyncio.ensure_future(self._read())
        try:
            value = await asyncio.shield(self._inflight)
        finally:
            self._inflight = None
        self._cached, self._cached_at = value, time.monotonic()
        return value

    def invalidate(self) -> None:
        """The next ``get`` reads afresh."""
        self._cached = None
