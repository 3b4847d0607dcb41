"""What keeps the scripts' cost flat in models per node: grants raise one entry, releases
rewrite only raised ones, a heartbeat that changes nothing writes no per-model key, lapsed
nodes leave their models' sets lazily without /v1/models ever counting them."""

from __future__ import annotations

from contract.fleet import Fleet, sleep_ms
from llm_router.state.scripts import Queued, Refused

MODELS = ["flat-a", "flat-b", "flat-c"]
UTIL_UNIT = 1e9


async def _model_keys(fleet: Fleet) -> dict[str, dict[str, float]]:
    out = {}
    for m in MODELS:
        out[f"nodes:{m}"] = await fleet.zmembers(fleet.keys.model_nodes(m))
        out[f"load:{m}"] = await fleet.zmembers(fleet.keys.model_load(m))
    out["known"] = await fleet.zmembers(fleet.keys.models_known)
    return out


async def test_a_grant_raises_only_the_chosen_models_entry(fleet: Fleet) -> None:
    reg = await fleet.register("box", MODELS, max_concurrency=4)
    floors = {m: (await fleet.zmembers(fleet.keys.model_load(m)))[reg.node_id] for m in MODELS}
    lease = await fleet.lease(MODELS[0])
    load = {m: (await fleet.zmembers(fleet.keys.model_load(m)))[reg.node_id] for m in MODELS}
    assert load[MODELS[0]] == floors[MODELS[0]] + 250_000 * UTIL_UNIT
    assert [load[m] for m in MODELS[1:]] == [floors[m] for m in MODELS[1:]]
    raised = await fleet.redis.hkeys(fleet.keys.raised(reg.node_id))
    assert [r.decode() if isinstance(r, bytes) else r for r in raised] == [MODELS[0]]

    # A stale-low entry met by another model's request is repaired on the way.
    other = await fleet.lease(MODELS[1])
    assert other.node_id == reg.node_id
    stored = (await fleet.zmembers(fleet.keys.model_load(MODELS[1])))[reg.node_id]
    assert stored == floors[MODELS[1]] + 500_000 * UTIL_UNIT

    await fleet.release(lease)
    await fleet.release(other)
    assert {m: (await fleet.zmembers(fleet.keys.model_load(m)))[reg.node_id] for m in MODELS} == (
        floors
    )
    assert not await fleet.redis.exists(fleet.keys.raised(reg.node_id))


async def test_a_heartbeat_that_changes_nothing_writes_no_model_key(fleet: Fleet) -> None:
    reg = await fleet.register("box", MODELS)
    await fleet.heartbeat(reg, executable_models=MODELS)
    before = await _model_keys(fleet)
    await sleep_ms(5)
    await fleet.heartbeat(reg, executable_models=MODELS, cpu_usage=33.0)
    assert await _model_keys(fleet) == before


async def test_a_changed_warm_set_moves_only_the_flipped_models(fleet: Fleet) -> None:
    reg = await fleet.register("box", MODELS)
    await fleet.heartbeat(reg, loaded_models=[MODELS[0]])
    before = await _model_keys(fleet)
    await fleet.heartbeat(reg, loaded_models=[MODELS[1]])
    after = await _model_keys(fleet)
    node = reg.node_id
    assert after[f"load:{MODELS[0]}"][node] == before[f"load:{MODELS[0]}"][node] + 1e8
    assert after[f"load:{MODELS[1]}"][node] == before[f"load:{MODELS[1]}"][node] - 1e8
    assert after[f"load:{MODELS[2]}"] == before[f"load:{MODELS[2]}"]


async def test_a_lapsed_node_is_never_listed_and_is_swept_by_a_later_heartbeat(
    fleet: Fleet,
) -> None:
    short = fleet.with_timing(alive_ttl_ms=100)
    staying = await fleet.register("staying", MODELS[:1])
    lapsing = await fleet.register("lapsing", MODELS, registry=short)
    await sleep_ms(150)
    # Not swept yet, yet not counted.
    assert lapsing.node_id in await fleet.zmembers(fleet.keys.model_nodes(MODELS[1]))
    listed = {e.id: e.node_count for e in await fleet.registry.list_models()}
    assert listed == {MODELS[0]: 1}

    await fleet.heartbeat(staying)
    for m in MODELS:
        assert lapsing.node_id not in await fleet.zmembers(fleet.keys.model_nodes(m))
        assert lapsing.node_id not in await fleet.zmembers(fleet.keys.model_load(m))
    assert {e.id: e.node_count for e in await fleet.registry.list_models()} == {MODELS[0]: 1}

    # Back from offline: every model again.
    await fleet.heartbeat(lapsing)
    listed = {e.id: e.node_count for e in await fleet.registry.list_models()}
    assert listed == {MODELS[0]: 2, MODELS[1]: 1, MODELS[2]: 1}
    assert (await fleet.lease(MODELS[2])).node_id == lapsing.node_id


async def test_an_ended_cool_down_comes_back_although_its_key_expired(fleet: Fleet) -> None:
    reg = await fleet.register("box", MODELS)
    lease = await fleet.lease(MODELS[0])
    await fleet.release(lease, exclude_model=MODELS[0], cooldown_ms=50)
    await sleep_ms(120)
    assert not await fleet.redis.exists(fleet.keys.excluded(reg.node_id))
    await fleet.heartbeat(reg)
    assert reg.node_id in await fleet.zmembers(fleet.keys.model_load(MODELS[0]))


async def test_a_release_wakes_only_models_somebody_queues_for(fleet: Fleet) -> None:
    reg = await fleet.register("box", MODELS, max_concurrency=1)
    held = await fleet.lease(MODELS[0])
    waiter = await fleet.acquire(MODELS[1], ticket="w")
    assert isinstance(waiter, Queued)
    assert await fleet.redis.smembers(fleet.keys.queues_active) in ({MODELS[1]}, {b"flat-b"})
    await fleet.scripts.leave_queue(model=MODELS[1], ticket="w")
    assert not await fleet.redis.exists(fleet.keys.queues_active)
    await fleet.release(held)
    assert reg.node_id in await fleet.zmembers(fleet.keys.model_load(MODELS[1]))


async def test_a_model_an_offline_node_remembers_stays_known_when_its_last_live_node_goes(
    fleet: Fleet,
) -> None:
    """Swept out of the model's set, an offline node still counts for 404 against 503."""
    short = fleet.with_timing(alive_ttl_ms=100)
    staying = await fleet.register("staying", MODELS[:2])
    offline = await fleet.register("offline", MODELS[:1], registry=short)
    await sleep_ms(150)
    await fleet.heartbeat(staying)  # sweeps the offline node out of model:<m>:nodes
    assert offline.node_id not in await fleet.zmembers(fleet.keys.model_nodes(MODELS[0]))

    assert await fleet.registry.deregister(staying.node_id) == "ok"
    # The offline node can execute MODELS[0]: known, nobody to take it (503).
    assert await fleet.acquire(MODELS[0]) == Refused("no_capable")
    # Nobody remembers MODELS[1]: unknown at once (404).
    assert await fleet.acquire(MODELS[1]) == Refused("not_found")


async def _loads(fleet: Fleet, node_id: str) -> dict[str, float]:
    return {m: (await fleet.zmembers(fleet.keys.model_load(m)))[node_id] for m in MODELS}


async def test_runtime_pressure_moves_the_floor_only_by_two_bands_or_back_to_idle(
    fleet: Fleet,
) -> None:
    """A runtime queue that jitters by one request rewrites no model's entry on its beats."""
    reg = await fleet.register("box", MODELS)
    await fleet.heartbeat(reg, runtime_load={"waiting": 0})
    idle = await _loads(fleet, reg.node_id)
    pressed = 1e7  # one band of runtime pressure in the score
    await fleet.heartbeat(reg, runtime_load={"waiting": 1})
    assert await _loads(fleet, reg.node_id) == idle
    await fleet.heartbeat(reg, runtime_load={"waiting": 2})
    moved = await _loads(fleet, reg.node_id)
    assert moved == {m: idle[m] + 2 * pressed for m in MODELS}
    # 2 -> 3 -> 1: one band each way from the value in force (2) moves nothing.
    await fleet.heartbeat(reg, runtime_load={"waiting": 3})
    await fleet.heartbeat(reg, runtime_load={"waiting": 1})
    assert await _loads(fleet, reg.node_id) == moved
    # Idle again counts at once.
    await fleet.heartbeat(reg, runtime_load={"waiting": 0})
    assert await _loads(fleet, reg.node_id) == idle


async def test_liveness_falls_back_to_the_alive_index_when_the_nodes_copy_lags(
    fleet: Fleet,
) -> None:
    """A replica of an older version writes nodes:alive only: a node whose copy is missing
    or behind is judged by nodes:alive, never dropped for it."""
    reg = await fleet.register("box", MODELS)
    key = fleet.keys.node(reg.node_id)
    assert int(await fleet.redis.hget(key, "alive_until")) == int(
        await fleet.redis.zscore(fleet.keys.nodes_alive, reg.node_id)
    )
    await fleet.redis.hdel(key, "alive_until")
    first = await fleet.lease(MODELS[0])
    await fleet.redis.hset(key, "alive_until", 1)
    second = await fleet.lease(MODELS[0])
    assert first.node_id == second.node_id == reg.node_id
    assert reg.node_id in await fleet.zmembers(fleet.keys.model_load(MODELS[0]))


async def test_a_release_counts_expired_leases_out_and_the_heartbeat_prunes_them(
    fleet: Fleet,
) -> None:
    reg = await fleet.register("box", MODELS, max_concurrency=4)
    floor = (await fleet.zmembers(fleet.keys.model_load(MODELS[0])))[reg.node_id]
    await fleet.lease(MODELS[0], lease_ttl_ms=30)
    kept = await fleet.lease(MODELS[0])
    await sleep_ms(60)
    assert await fleet.release(kept) == 0  # the expired one is not in flight
    assert (await fleet.zmembers(fleet.keys.model_load(MODELS[0])))[reg.node_id] == floor
    await fleet.heartbeat(reg)
    assert await fleet.redis.zcard(fleet.keys.leases(reg.node_id)) == 0
