"""What ``/v1/models`` costs Redis on an inflated fleet: one node key's worth of identities,
each advertising the most models a node may, on a real redis-server.

Figures are Redis-side time per call from ``INFO commandstats`` (EVALSHA usec/calls after
``CONFIG RESETSTAT``), medians over rounds. "Uncached" is the listing script every call
ran before (one per /v1/models request); "cached" is what a replica now runs per request
while the fleet's models stamp is unchanged. Run: python -m tests.benchmarks.models_listing
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import uuid
from typing import Any

from redis.asyncio import Redis
from tests.redis_server import running_redis_server

from llm_router.protocol import RegisterRequest
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, RegistryConfig
from llm_router.state.scripts import FleetScripts

IDENTITIES = 10
MODELS_PER_NODE = 4096
CALLS = 20
ROUNDS = 5


async def _evalsha_usec(redis: Redis, call: Any) -> float:
    await redis.config_resetstat()
    for _ in range(CALLS):
        await call()
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0)) / max(1, int(stats.get("calls", 1)))


async def _median(redis: Redis, call: Any) -> float:
    return statistics.median([await _evalsha_usec(redis, call) for _ in range(ROUNDS)])


async def main() -> None:
    with running_redis_server() as server:
        redis = Redis(host="127.0.0.1", port=server.port, socket_timeout=30)
        keys = Keys(f"bench{uuid.uuid4().hex[:6]}")
        scripts = FleetScripts(redis, keys)
        config = RegistryConfig(alive_ttl_ms=600_000, forget_ms=86_400_000)
        registry = NodeRegistry(redis, keys, scripts, config)
        ids = []
        for n in range(IDENTITIES):
            models = [f"inflated-{n}-{i}" for i in range(MODELS_PER_NODE)]
            request = RegisterRequest.model_validate(
                {"machine_name": f"h{n}", "ip_address": "127.0.0.1", "runtime_port": 9000,
                 "gpu_backend": "cpu", "executable_models": models}
            )  # fmt: skip
            ids.append((await registry.register(request, executable_models=models,
                                                gpu_backend="cpu")).node_id)  # fmt: skip
        listed = len(await registry.list_models())
        uncached = await _median(redis, lambda: scripts.list_models(forget_ms=config.forget_ms))
        cached = await _median(redis, registry.list_models)
        print(f"inflated fleet: {IDENTITIES} identities x {MODELS_PER_NODE} models = {listed}")
        print(f"  /v1/models Redis time, uncached (every call before): {uncached / 1000:.2f} ms")
        print(f"  /v1/models Redis time, cached (stamp check):         {cached / 1000:.3f} ms")
        print(f"  ratio uncached/cached: {uncached / max(cached, 0.001):.0f}x")
        for node_id in ids:
            await registry.deregister(node_id)
        known = await redis.zcard(keys.models_known)
        after = await _median(redis, lambda: scripts.list_models(forget_ms=config.forget_ms))
        print(f"after deleting every node: {known} models still known (before: every one, "
              f"until the 24 h forget); uncached listing {after / 1000:.3f} ms")  # fmt: skip
        await redis.aclose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
