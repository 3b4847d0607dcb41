"""What a replica adds to authentication at run time: the managed-key refresher and the
rate limiter, built from the fleet's store and started with the app."""

from __future__ import annotations

from dataclasses import dataclass

from llm_router.auth import KeyRing, Principal
from llm_router.security.managed_keys import KeyRefresher, ManagedKeyStore
from llm_router.security.rate_limit import RateLimiter
from llm_router.settings import RouterSettings
from llm_router.state.keys import Keys
from llm_router.state.scripts import FleetScripts


@dataclass
class Guard:
    refresher: KeyRefresher
    limiter: RateLimiter

    @classmethod
    def build(
        cls,
        settings: RouterSettings,
        redis: object,
        keys: Keys,
        keyring: KeyRing,
        scripts: FleetScripts,
    ) -> Guard:
        return cls(
            refresher=KeyRefresher(ManagedKeyStore(redis, keys), keyring, settings.key_refresh_s),
            limiter=RateLimiter(scripts, settings.rate_limit_per_minute),
        )

    async def start(self) -> None:
        await self.refresher.start()

    async def stop(self) -> None:
        await self.refresher.stop()

    async def admit(self, principal: Principal | None) -> None:
        await self.limiter.admit(principal)
