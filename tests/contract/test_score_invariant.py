"""Property test of the load index: random interleavings of grants, releases and heartbeats
that change a node's floor, warm set or executable set, on several models at once.

After every step, for every model and every node in its load index: the stored score is at
most the node's real score (utilisation from its live leases, floor from its record, both
recomputed here from the formula in docs/redis-keys.md), and the stored score's part below
utilisation is the floor exactly. Before every acquire the real scores of the eligible nodes
are computed here too: a grant goes to a node of minimal real score with a free slot, and a
request queues only when every eligible node is full. A release, a repair on the walk and a
heartbeat must all keep this; a grant writes only the chosen model's entry.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.fleet import Fleet
from llm_router.state.connect import open_store
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, Registration, RegistryConfig
from llm_router.state.scripts import FleetScripts, Granted, Queued

MODELS = ["m0", "m1", "m2", "m3"]
NODES = 4
UTIL_UNIT = 1e9
FULL = 1e15


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _latency_band(ms: float) -> int:
    band, edge = 0, 100.0
    while ms >= edge and band < 7:
        band, edge = band + 1, edge * 2
    return band


def _floor(record: dict[str, str], model: str) -> int:
    """The entry's floor, from the node record, by the documented formula."""
    load = json.loads(record.get("runtime_load", "{}") or "{}")
    pressure = min(
        int(
            max(float(load.get("waiting", 0)), 0)
            + int(min(max(float(load.get("kv_cache_usage", 0)), 0), 1) * 5)
        ),
        9,
    )
    # Hysteresis: a move by one band keeps the pressure in force (floor_base's digit).
    held = int(float(record["floor_base"])) // 10**7 % 10 if "floor_base" in record else None
    if pressure and held is not None and abs(pressure - held) < 2:
        pressure = held
    cap = int(min(max(float(record.get("gpu_capability_score", 0)), 0), 9999))
    lat = min(max(float(record.get("average_response_time_ms", 0)), 0), 9999)
    cold = 0
    if "loaded_models" in record and model not in json.loads(record["loaded_models"]):
        cold = 1
    return cold * 10**8 + pressure * 10**7 + (9999 - cap) * 100 + _latency_band(lat)


@dataclass
class World:
    fleet: Fleet
    regs: list[Registration]
    held: list[tuple[str, str]] = field(default_factory=list)

    async def record(self, node_id: str) -> dict[str, str]:
        raw = await self.fleet.redis.hgetall(self.fleet.keys.node(node_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def real(self, node_id: str, model: str) -> float:
        record = await self.record(node_id)
        maxc = max(int(record["max_concurrency"]), 1)
        inflight = await self.fleet.live_leases(node_id)
        util = min(inflight, maxc) * 1_000_000 // maxc
        return util * UTIL_UNIT + _floor(record, model)

    async def eligible(self, model: str) -> dict[str, float]:
        out = {}
        for reg in self.regs:
            record = await self.record(reg.node_id)
            if model in json.loads(record["executable_models"]):
                out[reg.node_id] = await self.real(reg.node_id, model)
        return out

    async def check_index(self) -> None:
        for model in MODELS:
            entries = await self.fleet.zmembers(self.fleet.keys.model_load(model))
            assert set(entries) == set(await self.eligible(model)), model
            for node_id, stored in entries.items():
                real = await self.real(node_id, model)
                assert stored <= real, (model, node_id, stored, real)
                assert stored % UTIL_UNIT == _floor(await self.record(node_id), model)

    async def acquire(self, model: str) -> None:
        reals = await self.eligible(model)
        ticket = uuid.uuid4().hex
        result = await self.fleet.acquire(model, ticket=ticket, lease_ttl_ms=600_000)
        best = min(reals.values(), default=FULL)
        if isinstance(result, Granted):
            assert best < FULL
            assert reals[result.node_id] == best, (result.node_id, reals)
            self.held.append((result.node_id, result.lease_id))
        else:
            assert isinstance(result, Queued), result
            assert best >= FULL, reals
            await self.fleet.scripts.leave_queue(model=model, ticket=ticket)


mask = st.lists(st.booleans(), min_size=len(MODELS), max_size=len(MODELS))
node = st.integers(0, NODES - 1)
step = st.one_of(
    st.tuples(st.just("acquire"), st.sampled_from(MODELS)),
    st.tuples(st.just("release"), st.integers(0, 63)),
    st.tuples(
        st.just("floor"), node, st.integers(0, 9999), st.integers(0, 9000), st.integers(0, 3)
    ),
    st.tuples(st.just("warm"), node, mask),
    st.tuples(st.just("models"), node, mask),
    st.tuples(st.just("same"), node),
)


async def _run(url: str | None, capacities: list[int], steps: list[tuple[Any, ...]]) -> None:
    store = open_store(url)
    keys = Keys(prefix=f"inv{uuid.uuid4().hex[:10]}")
    scripts = FleetScripts(store.redis, keys)
    config = RegistryConfig(alive_ttl_ms=600_000, forget_ms=3_600_000)
    fleet = Fleet(store, keys, scripts, NodeRegistry(store.redis, keys, scripts, config), config)
    try:
        regs = [
            await fleet.register(f"n{i}", MODELS, max_concurrency=c, score=5000)
            for i, c in enumerate(capacities)
        ]
        world = World(fleet, regs)
        executable = {i: list(MODELS) for i in range(NODES)}
        for kind, *args in steps:
            if kind == "acquire":
                await world.acquire(args[0])
            elif kind == "release" and world.held:
                node_id, lease = world.held.pop(args[0] % len(world.held))
                await fleet.scripts.release(node_id=node_id, lease_id=lease)
            elif kind == "floor":
                i, cap, latency, waiting = args
                await fleet.heartbeat(
                    regs[i],
                    gpu_capability_score=cap,
                    average_response_time_ms=latency,
                    runtime_load={"waiting": waiting},
                )
            elif kind == "warm":
                i, picked = args
                loaded = [m for m, keep in zip(MODELS, picked, strict=True) if keep]
                await fleet.heartbeat(regs[i], loaded_models=loaded)
            elif kind == "models":
                i, picked = args
                executable[args[0]] = [m for m, keep in zip(MODELS, picked, strict=True) if keep]
                await fleet.heartbeat(regs[i], executable_models=executable[i])
            elif kind == "same":
                await fleet.heartbeat(regs[args[0]], executable_models=executable[args[0]])
            await world.check_index()
    finally:
        await store.redis.flushdb() if url else None
        await store.close()


@pytest.mark.parametrize("kind", ["fake", "real"])
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    capacities=st.lists(st.integers(1, 3), min_size=NODES, max_size=NODES),
    steps=st.lists(step, min_size=1, max_size=30),
)
def test_stored_scores_stay_below_real_and_grants_take_the_least_loaded(
    kind: str, redis_url: str, capacities: list[int], steps: list[tuple[Any, ...]]
) -> None:
    asyncio.run(_run(redis_url if kind == "real" else None, capacities, steps))
