"""Test-side handle on one fleet's state: register nodes, beat, acquire, inspect keys.

The helpers only shorten the tests; every assertion goes through the public registry and
script wrappers, or reads Redis directly by the names ``Keys`` builds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llm_router.protocol import HeartbeatRequest, RegisterRequest
from llm_router.state.connect import Store
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, Registration, RegistryConfig
from llm_router.state.scripts import (
    NO_AFFINITY,
    AcquireResult,
    Affinity,
    FailureReport,
    FleetScripts,
    Granted,
)
from llm_router.tenancy import DEFAULT_TENANCY, Tenancy


@dataclass(frozen=True)
class Lease:
    node_id: str
    lease_id: str
    granted: Granted


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Fleet:
    store: Store
    keys: Keys
    scripts: FleetScripts
    registry: NodeRegistry
    config: RegistryConfig

    @property
    def redis(self) -> Any:
        return self.store.redis

    def with_timing(
        self, *, alive_ttl_ms: int | None = None, forget_ms: int | None = None
    ) -> NodeRegistry:
        """A registry on the same store and scripts with other clocks."""
        config = RegistryConfig(
            alive_ttl_ms=alive_ttl_ms if alive_ttl_ms is not None else self.config.alive_ttl_ms,
            forget_ms=forget_ms if forget_ms is not None else self.config.forget_ms,
            default_max_concurrency=self.config.default_max_concurrency,
        )
        return NodeRegistry(self.redis, self.keys, self.scripts, config)

    async def register(
        self,
        name: str,
        models: Sequence[str],
        *,
        port: int = 8000,
        installed: Sequence[str] | None = None,
        max_concurrency: int | None = None,
        score: float | None = None,
        backend: str | None = "cuda",
        registry: NodeRegistry | None = None,
    ) -> Registration:
        body: dict[str, Any] = {
            "machine_name": name,
            "ip_address": "127.0.0.1",
            "runtime_port": port,
        }
        if backend is not None:
            body["gpu_backend"] = backend
        if installed is not None:
            body["models"] = list(installed)
        if max_concurrency is not None:
            body["max_concurrency"] = max_concurrency
        if score is not None:
            body["gpu_capability_score"] = score
        request = RegisterRequest.model_validate(body)
        return await (registry or self.registry).register(
            request, executable_models=list(models), gpu_backend=None
        )

    async def heartbeat(
        self,
        reg: Registration,
        *,
        token: str | None = None,
        registry: NodeRegistry | None = None,
        **fields: Any,
    ) -> str:
        beat = HeartbeatRequest.model_validate({"node_id": reg.node_id, **fields})
        return await (registry or self.registry).heartbeat(beat, token or reg.token)

    async def acquire(
        self,
        model: str,
        *,
        lease_id: str | None = None,
        ticket: str | None = None,
        lease_ttl_ms: int = 30_000,
        queue_max: int = 64,
        ticket_ttl_ms: int = 30_000,
        forget_ms: int | None = None,
        family: str = "",
        response_id: str = "",
        affinity: Affinity = NO_AFFINITY,
        avoid: Sequence[str] = (),
        tenancy: Tenancy = DEFAULT_TENANCY,
    ) -> AcquireResult:
        return await self.scripts.acquire(
            model=model,
            lease_id=lease_id or uuid.uuid4().hex,
            lease_ttl_ms=lease_ttl_ms,
            ticket=ticket or uuid.uuid4().hex,
            queue_max=queue_max,
            ticket_ttl_ms=ticket_ttl_ms,
            forget_ms=forget_ms if forget_ms is not None else self.config.forget_ms,
            family=family,
            response_id=response_id,
            affinity=affinity,
            avoid=avoid,
            tenancy=tenancy,
        )

    async def lease(self, model: str, *, lease_ttl_ms: int = 30_000, **kw: Any) -> Lease:
        """Acquire and insist on a grant."""
        lease_id = uuid.uuid4().hex
        result = await self.acquire(model, lease_id=lease_id, lease_ttl_ms=lease_ttl_ms, **kw)
        assert isinstance(result, Granted), f"expected a grant for {model!r}, got {result!r}"
        return Lease(node_id=result.node_id, lease_id=lease_id, granted=result)

    async def release(self, lease: Lease, *, exclude_model: str = "", cooldown_ms: int = 0) -> int:
        return await self.scripts.release(
            node_id=lease.node_id,
            lease_id=lease.lease_id,
            exclude_model=exclude_model,
            cooldown_ms=cooldown_ms,
        )

    async def fail(self, lease: Lease, report: FailureReport) -> bool:
        """End a failed attempt's lease with what it says; True if the pair got excluded."""
        return await self.scripts.fail(
            node_id=lease.node_id, lease_id=lease.lease_id, report=report
        )

    async def zmembers(self, key: str) -> dict[str, float]:
        raw = await self.redis.zrange(key, 0, -1, withscores=True)
        return {_text(member): float(score) for member, score in raw}

    async def live_leases(self, node_id: str) -> int:
        now = await self.now_ms()
        return int(await self.redis.zcount(self.keys.leases(node_id), now + 1, "+inf"))

    async def now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def all_keys(self) -> list[str]:
        """Every key of this fleet's prefix (SCAN, so it is safe on a shared server)."""
        found = [_text(k) async for k in self.redis.scan_iter(match=f"{self.keys.base}*")]
        return sorted(found)

    async def dump(self, key: str) -> list[str]:
        """Every member, field and value a key holds, as text (for "nothing left" checks)."""
        kind = _text(await self.redis.type(key))
        if kind == "hash":
            items = await self.redis.hgetall(key)
            return [_text(x) for pair in items.items() for x in pair]
        if kind == "zset":
            return [_text(m) for m in await self.redis.zrange(key, 0, -1)]
        if kind == "set":
            return [_text(m) for m in await self.redis.smembers(key)]
        if kind == "list":
            return [_text(m) for m in await self.redis.lrange(key, 0, -1)]
        if kind == "string":
            return [_text(await self.redis.get(key))]
        return []


async def sleep_ms(ms: int) -> None:
    await asyncio.sleep(ms / 1000)


async def acquire_unknown_model(url: str, timeout_s: float = 2.0) -> AcquireResult:
    """One ``acquire`` through a store opened from ``url``, as a router opens it (with the
    request path's shared connection), for a model nobody serves."""
    from llm_router.state.connect import open_store

    store = open_store(url, timeout_s=timeout_s)
    try:
        assert store.fast is not None, f"{url} has no shared connection"
        scripts = FleetScripts(store.redis, Keys(f"probe{uuid.uuid4().hex[:8]}"), store.fast)
        return await scripts.acquire(
            model="nobody-has-it",
            lease_id="l",
            lease_ttl_ms=1000,
            ticket="t",
            queue_max=1,
            ticket_ttl_ms=1000,
            forget_ms=1000,
        )
    finally:
        await store.close()
