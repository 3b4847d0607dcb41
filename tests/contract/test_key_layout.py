"""Every key the scripts and the registry write is one that ``Keys`` builds.

The scenario runs on a database of its own (a fresh embedded store, or an emptied database
of the session's redis-server), so every key found afterwards was made by it: a key outside
the fleet prefix or outside the documented scheme fails the test by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from contract.fleet import Fleet, sleep_ms
from llm_router.state.connect import Store, open_store
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, RegistryConfig
from llm_router.state.scripts import Affinity, Ending, FailureReport, FleetScripts, Granted, Queued
from redis_server import RedisServer

#: A database no other test uses; emptied before the scenario.
LAYOUT_DB = 9

PIN = "0123456789abcdef01234567"
MODELS = ["llama3:8b", "org/mistral-7b.gguf", "phi-3-mlx", "never-asked"]
INSTALLED_ONLY = "weights-awq"
RESPONSE_ID = "resp_layout"


@pytest.fixture
async def isolated_fleet(store_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Fleet]:
    if store_kind == "real":
        server: RedisServer = request.getfixturevalue("redis_server")
        store: Store = open_store(server.url_for_db(LAYOUT_DB))
        await store.redis.flushdb()
    else:
        store = open_store(None)
    keys = Keys(prefix="layout")
    scripts = FleetScripts(store.redis, keys)
    config = RegistryConfig(alive_ttl_ms=30_000, forget_ms=600_000, default_max_concurrency=2)
    try:
        yield Fleet(store, keys, scripts, NodeRegistry(store.redis, keys, scripts, config), config)
    finally:
        await store.redis.flushdb()
        await store.close()


def _possible_keys(keys: Keys, node_ids: list[str], models: list[str]) -> set[str]:
    out = {
        keys.nodes_alive,
        keys.nodes_index,
        keys.nodes_drained,
        keys.models_version,
        keys.models_known,
        keys.models_created,
        keys.nodes_swept,
        keys.queues_active,
        keys.api_keys,
        keys.pin(PIN),
    }
    for node_id in node_ids:
        out |= {
            keys.node(node_id),
            keys.node_metrics(node_id),
            keys.leases(node_id),
            keys.excluded(node_id),
            keys.unsupported(node_id),
            keys.raised(node_id),
        }
        out |= {keys.failures(node_id, model) for model in models}
    out.add(keys.response(RESPONSE_ID))
    for model in models:
        out |= {
            keys.model_nodes(model),
            keys.model_load(model),
            keys.model_rr(model),
            keys.queue(model),
            keys.queue_alive(model),
            keys.queue_fair(model),
            keys.queue_shed(model),
            keys.queue_info(model),
        }
    return out


async def _scenario(fleet: Fleet) -> tuple[list[str], list[str]]:
    """Touch every write path once; return the node ids and models involved."""
    short = fleet.with_timing(alive_ttl_ms=100, forget_ms=200)
    a = await fleet.register("mac", MODELS[:3], installed=[*MODELS[:3], INSTALLED_ONLY])
    b = await fleet.register("nv", MODELS[:2], max_concurrency=1, backend=None)
    gone = await fleet.register("gone", [MODELS[3]], registry=short)
    await fleet.heartbeat(
        a, executable_models=MODELS[:3], models=[*MODELS[:3], INSTALLED_ONLY], cpu_usage=5
    )
    await fleet.heartbeat(b, gpu_capability_score=8000, ready_models=[1, 2])

    # Fill both nodes for the first model, queue two waiters, renew, leave, release.
    leases = [await fleet.lease(MODELS[0]) for _ in range(3)]
    assert isinstance(await fleet.acquire(MODELS[0], ticket="w1"), Queued)
    await fleet.acquire(MODELS[0], ticket="w2")
    await fleet.scripts.renew(
        lease_ttl_ms=30_000,
        ticket_ttl_ms=30_000,
        leases=[(le.node_id, le.lease_id) for le in leases],
        tickets=[(MODELS[0], "w1"), (MODELS[0], "w2")],
    )
    await fleet.scripts.leave_queue(model=MODELS[0], ticket="w2")
    await fleet.release(leases[0], exclude_model=MODELS[0], cooldown_ms=50)
    # A failed attempt that counts as evidence against its node.
    evidence = FailureReport(
        model=MODELS[1], exclude_now=False, cooldown_ms=50, digest="d1", counts=True,
        failures_to_exclude=3, window_ms=30_000,
    )  # fmt: skip
    await fleet.fail(await fleet.lease(MODELS[1]), evidence)
    for lease in leases[1:]:
        await fleet.release(lease)
    assert isinstance(await fleet.acquire(MODELS[0], ticket="w1"), Granted)
    # A node declining an endpoint family, and one recording a stored response.
    declined = await fleet.lease(MODELS[1], family="embeddings")
    await fleet.scripts.release_many(
        [Ending(declined.node_id, declined.lease_id, cooldown_ms=60_000, refused_family="rerank")]
    )
    made = await fleet.lease(MODELS[1])
    await fleet.scripts.release_many(
        [Ending(made.node_id, made.lease_id, response_id=RESPONSE_ID, response_model=MODELS[1])]
    )
    await fleet.acquire(MODELS[1], response_id=RESPONSE_ID)
    # Equal nodes for a model exercise the rotation counter.
    for _ in range(3):
        await fleet.release(await fleet.lease(MODELS[1]))
    # A conversation's pin.
    pinned = Affinity(keys=(PIN,), ttl_ms=30_000, margin=500_000)
    await fleet.release(await fleet.lease(MODELS[1], affinity=pinned))

    await fleet.registry.drain(b.node_id)
    await fleet.registry.drain(b.node_id, draining=False)
    await fleet.registry.drain_identity("later:8000")
    await fleet.acquire(INSTALLED_ONLY)
    await fleet.acquire("nobody-has-this")
    await fleet.registry.list_models()
    await fleet.registry.list_nodes()
    await fleet.registry.get_nodes_for_model(MODELS[0])
    await sleep_ms(350)
    assert (await short.prune())[0] == 1
    await fleet.registry.deregister(a.node_id)
    await fleet.register("mac", MODELS[:1])
    return [a.node_id, b.node_id, gone.node_id], [
        *MODELS,
        INSTALLED_ONLY,
        "nobody-has-this",
    ]


async def test_every_key_is_in_the_fleet_scheme(isolated_fleet: Fleet) -> None:
    fleet = isolated_fleet
    node_ids, models = await _scenario(fleet)
    found = {
        k.decode() if isinstance(k, bytes) else k async for k in fleet.redis.scan_iter(match="*")
    }
    assert len(found) > 10, f"the scenario wrote too little to judge: {sorted(found)}"
    outside = sorted(k for k in found if not k.startswith(fleet.keys.base))
    assert outside == [], "keys outside the fleet's hash tag"

    # The re-registered "mac" got a new id: take it from the index.
    node_ids += [
        v.decode() if isinstance(v, bytes) else v
        for v in await fleet.redis.hvals(fleet.keys.nodes_index)
    ]
    unexplained = sorted(found - _possible_keys(fleet.keys, node_ids, models))
    assert unexplained == [], "keys built outside state/keys.py"
