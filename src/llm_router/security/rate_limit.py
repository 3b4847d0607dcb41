"""Per-key request rate limits, counted in Redis so that every replica shares one budget.

A limit applies to an authenticated key: the key's own ``rate_limit_per_minute`` (managed
keys) or the router's ``rate_limit_per_minute`` setting. With neither, or on an open scope
(no key, no identity), nothing is counted and no Redis call is made.
"""

from __future__ import annotations

import uuid

from llm_router.auth import Principal
from llm_router.errors import RateLimited
from llm_router.state.scripts import FleetScripts

_WINDOW_MS = 60_000


class RateLimiter:
    def __init__(self, scripts: FleetScripts, default_per_minute: int) -> None:
        self._scripts = scripts
        self._default = default_per_minute

    def limit_for(self, principal: Principal | None) -> int:
        if principal is None:
            return 0
        if principal.rate_limit_per_minute is not None:
            return principal.rate_limit_per_minute
        return self._default

    async def admit(self, principal: Principal | None) -> None:
        """Count one request for the caller's key; 429 ``rate_limit_exceeded`` past the limit."""
        limit = self.limit_for(principal)
        if limit <= 0 or principal is None:
            return
        decision = await self._scripts.rate_limit(
            key_id=principal.key_id, limit=limit, window_ms=_WINDOW_MS, member=uuid.uuid4().hex
        )
        if not decision.admitted:
            raise RateLimited(
                f"Rate limit of {limit} requests per minute reached for key "
                f"{principal.key_id}; retry later",
                retry_after_s=max(1.0, decision.retry_after_ms / 1000),
            )
