"""Affinity pins, bounded load and warm-first inside the acquire script.

Runs on the embedded store and on a real redis-server (the ``store`` fixture).
"""

from __future__ import annotations

from contract.fleet import Fleet, sleep_ms
from llm_router.state.scripts import Affinity, Granted, Queued

M = "chat-model.gguf"
OTHER = "other-model.gguf"
HALF = 500_000  # utilisation units: half a node


def pins(*keys: str, margin: int = HALF, ttl_ms: int = 30_000) -> Affinity:
    return Affinity(keys=keys, ttl_ms=ttl_ms, margin=margin)


async def grant(fleet: Fleet, affinity: Affinity, model: str = M) -> Granted:
    return (await fleet.lease(model, affinity=affinity)).granted


async def pinned_to(fleet: Fleet, key: str) -> str | None:
    value = await fleet.redis.get(fleet.keys.pin(key))
    return None if value is None else value.decode() if isinstance(value, bytes) else value


async def test_first_turn_is_new_and_pins_every_key(fleet: Fleet) -> None:
    await fleet.register("a", [M], max_concurrency=2)
    await fleet.register("b", [M], max_concurrency=2)
    first = await grant(fleet, pins("conv", "prefix"))
    assert first.affinity == "new"
    assert await pinned_to(fleet, "conv") == first.node_id
    assert await pinned_to(fleet, "prefix") == first.node_id
    ttl = await fleet.redis.pttl(fleet.keys.pin("conv"))
    assert 0 < ttl <= 30_000


async def test_next_turn_returns_to_the_pinned_node_within_the_margin(fleet: Fleet) -> None:
    await fleet.register("a", [M], max_concurrency=2)
    await fleet.register("b", [M], max_concurrency=2)
    first = await grant(fleet, pins("conv"))
    # The first turn still runs: the pinned node is at 1/2, the other idle; a margin of half a
    # node keeps the conversation where its cache is.
    second = await grant(fleet, pins("conv"))
    assert (second.node_id, second.affinity) == (first.node_id, "hit")
    assert second.in_flight == 2


async def test_pin_moves_when_the_pinned_node_is_too_far_above_the_best(fleet: Fleet) -> None:
    await fleet.register("a", [M], max_concurrency=4)
    await fleet.register("b", [M], max_concurrency=4)
    first = await grant(fleet, pins("conv", margin=250_000))
    await grant(fleet, pins("conv", margin=250_000))  # 2/4 on the pinned node: still a hit
    moved = await grant(fleet, pins("conv", margin=250_000))  # 2/4 vs 0/4: beyond the margin
    assert moved.node_id != first.node_id
    assert moved.affinity == "moved:loaded"
    assert await pinned_to(fleet, "conv") == moved.node_id


async def test_full_pinned_node_never_makes_a_request_queue(fleet: Fleet) -> None:
    await fleet.register("a", [M], max_concurrency=1)
    await fleet.register("b", [M], max_concurrency=1)
    first = await grant(fleet, pins("conv", margin=1_000_000))
    second = await grant(fleet, pins("conv", margin=1_000_000))
    assert second.node_id != first.node_id
    assert second.affinity == "moved:full"
    # Every node full now: the request queues like any other.
    assert isinstance(await fleet.acquire(M, affinity=pins("conv")), Queued)


async def test_drained_pinned_node_loses_the_pin(fleet: Fleet) -> None:
    await fleet.register("a", [M])
    await fleet.register("b", [M])
    first = await grant(fleet, pins("conv"))
    await fleet.registry.drain(first.node_id)
    moved = await grant(fleet, pins("conv"))
    assert moved.node_id != first.node_id
    assert moved.affinity == "moved:unavailable"
    assert await pinned_to(fleet, "conv") == moved.node_id


async def test_excluded_pinned_node_loses_the_pin(fleet: Fleet) -> None:
    await fleet.register("a", [M])
    await fleet.register("b", [M])
    first = await fleet.lease(M, affinity=pins("conv"))
    await fleet.release(first, exclude_model=M, cooldown_ms=30_000)
    moved = await grant(fleet, pins("conv"))
    assert (moved.node_id != first.node_id, moved.affinity) == (True, "moved:unavailable")


async def test_pinned_node_that_stops_serving_the_model_loses_the_pin(fleet: Fleet) -> None:
    a = await fleet.register("a", [M, OTHER])
    b = await fleet.register("b", [M, OTHER])
    first = await grant(fleet, pins("conv"))
    pinned = a if first.node_id == a.node_id else b
    await fleet.heartbeat(pinned, executable_models=[OTHER])
    moved = await grant(fleet, pins("conv"))
    assert (moved.node_id != first.node_id, moved.affinity) == (True, "moved:unavailable")


async def test_dead_pinned_node_loses_the_pin(fleet: Fleet) -> None:
    short = fleet.with_timing(alive_ttl_ms=150)
    doomed = await fleet.register("doomed", [M], registry=short, score=9000)
    survivor = await fleet.register("survivor", [M], score=100)
    first = await grant(fleet, pins("conv"))
    assert first.node_id == doomed.node_id  # more capable: the first pick
    await sleep_ms(300)  # no heartbeat: the doomed node is offline now
    moved = await grant(fleet, pins("conv"))
    assert (moved.node_id, moved.affinity) == (survivor.node_id, "moved:unavailable")


async def test_most_specific_existing_key_wins(fleet: Fleet) -> None:
    await fleet.register("a", [M], max_concurrency=8)
    await fleet.register("b", [M], max_concurrency=8)
    one = await grant(fleet, pins("shared-prefix"))
    other = await grant(fleet, pins("conversation"))
    assert one.node_id != other.node_id  # least loaded: one each
    # The conversation's own key comes first and names its node, over the shared prefix's.
    again = await grant(fleet, pins("conversation", "shared-prefix"))
    assert (again.node_id, again.affinity) == (other.node_id, "hit")
    assert await pinned_to(fleet, "shared-prefix") == other.node_id


async def test_expired_pin_is_a_new_conversation(fleet: Fleet) -> None:
    await fleet.register("a", [M])
    await grant(fleet, pins("conv", ttl_ms=100))
    await sleep_ms(200)
    assert (await grant(fleet, pins("conv"))).affinity == "new"


async def test_no_keys_reads_and_writes_no_pin(fleet: Fleet) -> None:
    await fleet.register("a", [M])
    granted = await grant(fleet, pins(ttl_ms=30_000))
    assert granted.affinity == ""
    assert not [k for k in await fleet.all_keys() if ":pin:" in k]


async def test_zero_ttl_turns_affinity_off(fleet: Fleet) -> None:
    await fleet.register("a", [M])
    granted = await grant(fleet, Affinity(keys=("conv",), ttl_ms=0, margin=HALF))
    assert granted.affinity == ""
    assert await pinned_to(fleet, "conv") is None


async def test_pins_are_per_key_not_per_model_only(fleet: Fleet) -> None:
    await fleet.register("a", [M], max_concurrency=8)
    await fleet.register("b", [M], max_concurrency=8)
    x = await grant(fleet, pins("conv-x"))
    y = await grant(fleet, pins("conv-y"))
    assert x.node_id != y.node_id
    for _ in range(3):
        assert (await grant(fleet, pins("conv-x"))).node_id == x.node_id
        assert (await grant(fleet, pins("conv-y"))).node_id == y.node_id


# --- warm first ------------------------------------------------------------------------------


async def test_warm_node_wins_among_equally_loaded(fleet: Fleet) -> None:
    a = await fleet.register("a", [M, OTHER])
    b = await fleet.register("b", [M, OTHER])
    await fleet.heartbeat(a, loaded_models=[OTHER])
    await fleet.heartbeat(b, loaded_models=[M])
    for _ in range(4):  # equal cold scores would rotate
        for model, warm in ((M, b), (OTHER, a)):
            lease = await fleet.lease(model)
            assert lease.node_id == warm.node_id
            await fleet.release(lease)


async def test_warm_first_never_outranks_load(fleet: Fleet) -> None:
    warm = await fleet.register("warm", [M], max_concurrency=2)
    cold = await fleet.register("cold", [M], max_concurrency=2)
    await fleet.heartbeat(warm, loaded_models=[M])
    await fleet.heartbeat(cold, loaded_models=[])
    assert (await fleet.lease(M)).node_id == warm.node_id
    assert (await fleet.lease(M)).node_id == cold.node_id  # 1/2 warm vs 0/2 cold


async def test_node_that_does_not_report_loaded_models_is_not_cold(fleet: Fleet) -> None:
    silent = await fleet.register("silent", [M], score=9000)
    reports = await fleet.register("reports", [M], score=100)
    await fleet.heartbeat(reports, loaded_models=[OTHER])
    assert (await fleet.lease(M)).node_id == silent.node_id


async def test_runtime_load_refines_equal_load(fleet: Fleet) -> None:
    busy = await fleet.register("busy", [M], score=9000)
    calm = await fleet.register("calm", [M], score=100)
    await fleet.heartbeat(busy, runtime_load={"running": 1, "waiting": 3})
    await fleet.heartbeat(calm, runtime_load={"running": 0, "kv_cache_usage": 0.1})
    assert (await fleet.lease(M)).node_id == calm.node_id


async def test_runtime_load_is_stored_on_the_record(fleet: Fleet) -> None:
    reg = await fleet.register("a", [M])
    await fleet.heartbeat(reg, runtime_load={"waiting": 2, "kv_cache_usage": 0.5})
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None
    assert record["runtime_load"] == {"waiting": 2, "kv_cache_usage": 0.5}


async def test_warmth_is_kept_through_release_and_drain(fleet: Fleet) -> None:
    a = await fleet.register("a", [M])
    b = await fleet.register("b", [M])
    await fleet.heartbeat(a, loaded_models=[])
    await fleet.heartbeat(b, loaded_models=[M])
    for _ in range(3):
        await fleet.registry.drain(b.node_id)
        await fleet.registry.drain(b.node_id, draining=False)
        lease = await fleet.lease(M)
        assert lease.node_id == b.node_id
        await fleet.release(lease)


async def test_pin_loses_only_to_a_verified_node(fleet: Fleet) -> None:
    x = await fleet.register("x", [M], max_concurrency=2, score=5000)
    y = await fleet.register("y", [M], max_concurrency=2, score=100)
    assert {(await fleet.lease(M)).node_id for _ in range(2)} == {x.node_id, y.node_id}
    # A node that dies keeps its idle score in the index until an acquire looks at it.
    short = fleet.with_timing(alive_ttl_ms=150)
    await fleet.register("dead", [M], max_concurrency=2, registry=short)
    await sleep_ms(300)
    await fleet.redis.set(fleet.keys.pin("conv"), x.node_id)
    # x at 1/2 is more than the margin above the dead node's stale 0, but not above y's
    # real 1/2: the pin holds.
    kept = await grant(fleet, pins("conv", margin=250_000))
    assert (kept.node_id, kept.affinity) == (x.node_id, "hit")
