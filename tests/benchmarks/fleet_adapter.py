"""The only place the benchmarks touch the project's state layer.

The micro-benchmarks call the fleet's real Lua scripts through ``FleetScripts`` and
populate Redis through ``NodeRegistry.register`` (the path a registration takes), so
their figures are the product's, not a stand-in's. If that API moves, this file moves.
"""

from __future__ import annotations

import uuid
from typing import Any

from redis.exceptions import NoScriptError

from llm_router.protocol import HeartbeatRequest, RegisterRequest
from llm_router.state.keys import Keys
from llm_router.state.multiplex import Address, Handshake, MultiplexedRedis, fixed
from llm_router.state.registry import NodeRegistry, Registration, RegistryConfig
from llm_router.state.scripts import (
    NO_AFFINITY,
    SCRIPT_NAMES,
    AcquireResult,
    Affinity,
    FleetScripts,
    Granted,
    Queued,
    function_library,
)
from llm_router.tenancy import DEFAULT_TENANCY, Tenancy

__all__ = [
    "Affinity",
    "Fleet",
    "Granted",
    "HeartbeatRequest",
    "Queued",
    "RegisterRequest",
    "Registration",
    "Tenancy",
    "multiplexed_registry",
    "script_names_by_sha",
]

ALIVE_TTL_MS = 3_600_000
FORGET_MS = 86_400_000
LEASE_TTL_MS = 60_000


class Fleet:
    def __init__(self, redis: Any, prefix: str = "llmr") -> None:
        self.keys = Keys(prefix)
        self.scripts = FleetScripts(redis, self.keys)
        self.registry = NodeRegistry(
            redis, self.keys, self.scripts, RegistryConfig(ALIVE_TTL_MS, FORGET_MS)
        )

    async def register(self, index: int, models: list[str], max_concurrency: int) -> Registration:
        request = RegisterRequest(
            machine_name=f"bench-node-{index:05d}",
            ip_address="10.0.0.1",  # stored only; nothing connects to it
            runtime_port=8000 + index % 50_000,
            gpu_devices=[{"model": "NVIDIA GeForce RTX 4090", "count": 1, "memory": 24564}],
            gpu_backend="cuda",
            executable_models=models,
            models=models,
            max_concurrency=max_concurrency,
            gpu_capability_score=8000,
        )
        return await self.registry.register(request, executable_models=models, gpu_backend="cuda")

    async def heartbeat(self, node: Registration, models: list[str]) -> str:
        beat = HeartbeatRequest(
            node_id=node.node_id,
            cpu_usage=12.5,
            memory_usage=40.0,
            active_requests=1,
            gpu_usage=55.0,
            gpu_memory_usage=70.0,
            gpu_temperature=61.0,
            average_response_time_ms=420.0,
            executable_models=models,
        )
        return await self.registry.heartbeat(beat, node.token)

    async def acquire(self, model: str, affinity: Affinity = NO_AFFINITY) -> tuple[str, str] | None:
        lease = uuid.uuid4().hex
        result = await self.scripts.acquire(
            model=model,
            lease_id=lease,
            lease_ttl_ms=LEASE_TTL_MS,
            ticket=uuid.uuid4().hex,
            queue_max=256,
            ticket_ttl_ms=3000,
            forget_ms=FORGET_MS,
            affinity=affinity,
        )
        return (result.node_id, lease) if isinstance(result, Granted) else None

    async def ask(
        self, model: str, ticket: str, tenancy: Tenancy = DEFAULT_TENANCY, lease: str = ""
    ) -> AcquireResult:
        """One acquire call for ``ticket`` (queued or not), its result as the script gave it."""
        return await self.scripts.acquire(
            model=model,
            lease_id=lease or uuid.uuid4().hex,
            lease_ttl_ms=LEASE_TTL_MS,
            ticket=ticket,
            queue_max=100_000,
            ticket_ttl_ms=600_000,
            forget_ms=FORGET_MS,
            tenancy=tenancy,
        )

    async def release(self, node_id: str, lease: str) -> None:
        await self.scripts.release(node_id=node_id, lease_id=lease)


class _MuxScripts(FleetScripts):
    """The fleet's scripts with every call (heartbeats and registrations too, not only the
    request path's) on one multiplexed connection: thousands of virtual nodes beating from
    one process cost the driver little, and Redis sees what it sees from many replicas."""

    async def _call(self, name: str, *args: str | int | float) -> Any:
        script = self._scripts[name]
        assert self._fast is not None
        try:
            return await self._fast.evalsha(script.sha, self._base, list(args))
        except NoScriptError:  # not loaded yet: redis-py's Script loads it and calls again
            return await script(keys=self._base, args=list(args))


def multiplexed_registry(
    redis: Any,
    port: int,
    *,
    alive_ttl_ms: int,
    forget_ms: int,
    client_name: str,
    timeout_s: float = 30.0,
) -> tuple[NodeRegistry, MultiplexedRedis]:
    """A ``NodeRegistry`` as a router replica builds it, on Redis at 127.0.0.1:``port``,
    whose script calls all share one multiplexed link (close the link when done)."""
    keys = Keys("llmr")
    mux = MultiplexedRedis(
        fixed(Address("127.0.0.1", port)), Handshake(client_name=client_name), timeout_s
    )
    scripts = _MuxScripts(redis, keys, mux)
    return NodeRegistry(redis, keys, scripts, RegistryConfig(alive_ttl_ms, forget_ms)), mux


def script_names_by_sha(redis: Any) -> dict[str, str]:
    """SHA1 of each fleet script (as EVALSHA names it), and its function's name in the
    library (as FCALL names it) -> the script's name."""
    scripts = FleetScripts(redis, Keys("llmr"))
    functions = {fn: name for name, fn in function_library().names.items()}
    return {**{scripts._scripts[name].sha: name for name in SCRIPT_NAMES}, **functions}
