"""Picking a node and leasing a slot: capacity, order, leases, exclusions, eligibility.

Runs on the embedded store and on a real redis-server (the ``store`` fixture).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from contract.fleet import Fleet, sleep_ms
from llm_router.state.scripts import Granted, Queued, Refused

M = "llama-3-8b.gguf"
OTHER = "qwen2-7b.gguf"


async def test_grant_carries_node_address_and_counts(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M], port=9000, max_concurrency=3)
    lease = await fleet.lease(M)
    assert lease.granted == Granted(
        lease_id=lease.lease_id,
        node_id=reg.node_id,
        ip_address="127.0.0.1",
        port=9001,
        in_flight=1,
        max_concurrency=3,
        scheme="http",
        secret=reg.secret,
    )
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["in_flight"] == 1


async def test_grant_carries_the_secret_of_the_latest_registration(fleet: Fleet) -> None:
    first = await fleet.register("box-a", [M], max_concurrency=4)
    before = (await fleet.lease(M)).granted
    again = await fleet.register("box-a", [M], max_concurrency=4)
    after = (await fleet.lease(M)).granted
    assert again.node_id == first.node_id
    assert first.secret.startswith("ns_") and again.secret != first.secret
    assert (before.secret, after.secret) == (first.secret, again.secret)
    record = await fleet.registry.get_node(first.node_id)
    assert record is not None and "node_secret" not in record
    assert again.secret not in repr(after) and record["scheme"] == "http"


async def test_concurrent_acquires_never_overfill_a_node(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M], max_concurrency=3)
    b = await fleet.register("box-b", [M], max_concurrency=2)
    results = await asyncio.gather(*(fleet.acquire(M, queue_max=100) for _ in range(50)))

    granted = [r for r in results if isinstance(r, Granted)]
    queued = [r for r in results if isinstance(r, Queued)]
    assert len(granted) == 5
    assert len(queued) == 45
    assert Counter(r.node_id for r in granted) == {a.node_id: 3, b.node_id: 2}
    assert all(r.in_flight <= r.max_concurrency for r in granted)
    assert sorted(q.position for q in queued) == list(range(1, 46))
    assert await fleet.live_leases(a.node_id) == 3
    assert await fleet.live_leases(b.node_id) == 2


async def test_concurrent_acquires_without_queue_are_refused_when_full(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M], max_concurrency=4)
    results = await asyncio.gather(*(fleet.acquire(M, queue_max=0) for _ in range(50)))
    assert sum(isinstance(r, Granted) for r in results) == 4
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(refused) == 46
    assert {r.reason for r in refused} == {"queue_full"}
    assert await fleet.live_leases(reg.node_id) == 4


async def test_least_loaded_node_is_chosen(fleet: Fleet) -> None:
    big = await fleet.register("big", [M], max_concurrency=10)
    small = await fleet.register("small", [M], max_concurrency=2)
    picks = [(await fleet.lease(M)).node_id for _ in range(5)]
    # Load is utilisation, not a count: 1/2 on the small node outweighs up to 4/10 on the
    # big one, so the small node gets exactly one of the first five.
    assert Counter(picks) == {big.node_id: 4, small.node_id: 1}
    assert (await fleet.lease(M)).node_id in (big.node_id, small.node_id)


async def test_least_loaded_alternates_between_equal_nodes(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M], max_concurrency=4)
    b = await fleet.register("box-b", [M], max_concurrency=4)
    picks = [(await fleet.lease(M)).node_id for _ in range(8)]
    for i in range(0, 8, 2):
        assert {picks[i], picks[i + 1]} == {a.node_id, b.node_id}


async def test_release_makes_a_node_least_loaded_again(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M], max_concurrency=4)
    b = await fleet.register("box-b", [M], max_concurrency=4)
    leases = [await fleet.lease(M) for _ in range(4)]
    on_a = [le for le in leases if le.node_id == a.node_id]
    for lease in on_a:
        await fleet.release(lease)
    assert (await fleet.lease(M)).node_id == a.node_id
    assert (await fleet.lease(M)).node_id == a.node_id
    assert await fleet.live_leases(b.node_id) == 2


async def test_capability_score_breaks_ties(fleet: Fleet) -> None:
    await fleet.register("weak", [M], score=100)
    strong = await fleet.register("strong", [M], score=9000)
    await fleet.register("medium", [M], score=5000)
    assert (await fleet.lease(M)).node_id == strong.node_id


async def test_capability_score_from_heartbeat(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M], score=100)
    b = await fleet.register("box-b", [M], score=200)
    await fleet.heartbeat(a, gpu_capability_score=9500)
    lease = await fleet.lease(M)
    assert lease.node_id == a.node_id
    await fleet.release(lease)
    await fleet.heartbeat(b, gpu_capability_score=9900)
    assert (await fleet.lease(M)).node_id == b.node_id


async def test_load_outranks_capability(fleet: Fleet) -> None:
    strong = await fleet.register("strong", [M], score=9000, max_concurrency=2)
    weak = await fleet.register("weak", [M], score=100, max_concurrency=2)
    assert (await fleet.lease(M)).node_id == strong.node_id
    assert (await fleet.lease(M)).node_id == weak.node_id


async def test_latency_breaks_ties_after_capability(fleet: Fleet) -> None:
    slow = await fleet.register("slow", [M])
    fast = await fleet.register("fast", [M])
    await fleet.heartbeat(slow, average_response_time_ms=2500)
    await fleet.heartbeat(fast, average_response_time_ms=300)
    assert (await fleet.lease(M)).node_id == fast.node_id


async def test_rotation_spreads_picks_among_equal_nodes(fleet: Fleet) -> None:
    regs = [await fleet.register(f"box-{i}", [M], max_concurrency=8) for i in range(3)]
    picks: Counter[str] = Counter()
    for _ in range(30):
        lease = await fleet.lease(M)
        picks[lease.node_id] += 1
        # Released at once: every pick sees three identical nodes.
        await fleet.release(lease)
    assert set(picks) == {r.node_id for r in regs}
    assert max(picks.values()) - min(picks.values()) <= 1


async def test_the_walk_goes_past_tied_entries_that_sit_below_their_nodes_real_load(
    fleet: Fleet,
) -> None:
    # Five equal nodes, four of them busier than their entries say (leases written behind
    # the index's back): wherever in the tie the rotation starts, the walk reads on past the
    # first entries until it finds the idle node, and leaves no entry above its real score.
    regs = [await fleet.register(f"box-{i}", [M], max_concurrency=2) for i in range(5)]
    busy, idle = regs[:4], regs[4]
    floor = (await fleet.zmembers(fleet.keys.model_load(M)))[idle.node_id]
    for reg in busy:
        await fleet.redis.zadd(fleet.keys.leases(reg.node_id), {"stale": 2**52})
    for _ in range(5):  # every place in the tie, in rotation
        lease = await fleet.lease(M)
        assert lease.node_id == idle.node_id
        load = await fleet.zmembers(fleet.keys.model_load(M))
        assert all(load[reg.node_id] <= floor + 500_000 * 1e9 for reg in busy)
        await fleet.release(lease)
        for reg in busy:  # back to stale-low entries, all tied again
            await fleet.redis.zadd(fleet.keys.model_load(M), {reg.node_id: floor})
            await fleet.redis.delete(fleet.keys.raised(reg.node_id))


async def test_expired_lease_is_reclaimed_by_next_acquire(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M], max_concurrency=1)
    await fleet.lease(M, lease_ttl_ms=100)
    assert await fleet.acquire(M, queue_max=0) == Refused("queue_full", queue_length=0)
    await sleep_ms(150)
    lease = await fleet.lease(M, queue_max=0)
    assert lease.node_id == reg.node_id
    assert lease.granted.in_flight == 1
    assert await fleet.redis.zcard(fleet.keys.leases(reg.node_id)) == 1


async def test_renew_keeps_a_lease_alive_past_its_ttl(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M], max_concurrency=1)
    lease = await fleet.lease(M, lease_ttl_ms=1000)
    await sleep_ms(500)
    renewed = await fleet.scripts.renew(
        lease_ttl_ms=1000, ticket_ttl_ms=1000, leases=[(reg.node_id, lease.lease_id)], tickets=[]
    )
    assert renewed == (1, 0)
    # Past the first deadline, before the renewed one, with room for a busy machine.
    await sleep_ms(750)
    assert await fleet.acquire(M, queue_max=0) == Refused("queue_full", queue_length=0)
    assert await fleet.live_leases(reg.node_id) == 1


async def test_renew_does_not_revive_an_expired_lease(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M], max_concurrency=1)
    lease = await fleet.lease(M, lease_ttl_ms=100)
    await sleep_ms(150)
    renewed = await fleet.scripts.renew(
        lease_ttl_ms=10_000, ticket_ttl_ms=1000, leases=[(reg.node_id, lease.lease_id)], tickets=[]
    )
    assert renewed == (0, 0)
    assert await fleet.live_leases(reg.node_id) == 0
    assert isinstance(await fleet.acquire(M, queue_max=0), Granted)


async def test_renew_of_unknown_lease_is_not_created(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    renewed = await fleet.scripts.renew(
        lease_ttl_ms=10_000, ticket_ttl_ms=1000, leases=[(reg.node_id, "never")], tickets=[]
    )
    assert renewed == (0, 0)
    assert await fleet.redis.zscore(fleet.keys.leases(reg.node_id), "never") is None


async def test_release_returns_in_flight_count(fleet: Fleet) -> None:
    await fleet.register("box-a", [M], max_concurrency=4)
    first = await fleet.lease(M)
    second = await fleet.lease(M)
    assert second.granted.in_flight == 2
    assert await fleet.release(first) == 1
    # Releasing twice is harmless.
    assert await fleet.release(first) == 1
    assert await fleet.release(second) == 0


async def test_release_frees_the_slot(fleet: Fleet) -> None:
    await fleet.register("box-a", [M], max_concurrency=1)
    lease = await fleet.lease(M)
    assert isinstance(await fleet.acquire(M, queue_max=0), Refused)
    await fleet.release(lease)
    assert isinstance(await fleet.acquire(M, queue_max=0), Granted)


async def test_exclusion_cools_down_then_returns_after_heartbeat(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M, OTHER])
    lease = await fleet.lease(M)
    assert await fleet.release(lease, exclude_model=M, cooldown_ms=400) == 0

    assert await fleet.acquire(M) == Refused("no_capable")
    assert await fleet.registry.get_nodes_for_model(M) == []
    # Only the failed pair is out: the node still serves its other model.
    assert (await fleet.lease(OTHER)).node_id == reg.node_id
    # A heartbeat during the cool-down does not bring the pair back.
    await fleet.heartbeat(reg, executable_models=[M, OTHER])
    assert await fleet.acquire(M) == Refused("no_capable")
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and M in record["excluded_models"]

    await sleep_ms(500)
    await fleet.heartbeat(reg)
    assert (await fleet.lease(M)).node_id == reg.node_id
    assert [n["id"] for n in await fleet.registry.get_nodes_for_model(M)] == [reg.node_id]


async def test_exclusion_sends_traffic_to_the_other_node(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M])
    b = await fleet.register("box-b", [M])
    lease = await fleet.lease(M)
    failed_node = lease.node_id
    await fleet.release(lease, exclude_model=M, cooldown_ms=60_000)
    healthy = b.node_id if failed_node == a.node_id else a.node_id
    for _ in range(4):
        assert (await fleet.lease(M)).node_id == healthy


async def test_exclusion_key_expires_by_itself(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    lease = await fleet.lease(M)
    await fleet.release(lease, exclude_model=M, cooldown_ms=60_000)
    ttl = await fleet.redis.pttl(fleet.keys.excluded(reg.node_id))
    assert 0 < ttl <= 60_000


async def test_draining_node_is_never_picked(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M])
    b = await fleet.register("box-b", [M], max_concurrency=100)
    assert await fleet.registry.drain(a.node_id)
    for _ in range(10):
        assert (await fleet.lease(M)).node_id == b.node_id
    assert await fleet.registry.drain(b.node_id)
    assert await fleet.acquire(M) == Refused("no_capable")
    assert await fleet.registry.drain(a.node_id, draining=False)
    assert (await fleet.lease(M)).node_id == a.node_id


async def test_draining_keeps_in_flight_leases(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M])
    lease = await fleet.lease(M)
    await fleet.registry.drain(a.node_id)
    record = await fleet.registry.get_node(a.node_id)
    assert record is not None and record["in_flight"] == 1
    assert await fleet.release(lease) == 0


async def test_dead_node_is_never_picked(fleet: Fleet) -> None:
    short = fleet.with_timing(alive_ttl_ms=100)
    await fleet.register("dies", [M], registry=short, score=9999)
    alive = await fleet.register("lives", [M], max_concurrency=100, score=1)
    await sleep_ms(150)
    for _ in range(10):
        assert (await fleet.lease(M)).node_id == alive.node_id


async def test_full_nodes_queue_rather_than_refuse(fleet: Fleet) -> None:
    await fleet.register("box-a", [M], max_concurrency=1)
    await fleet.lease(M)
    result = await fleet.acquire(M, ticket=uuid.uuid4().hex)
    assert isinstance(result, Queued) and result.position == 1


async def test_other_models_leases_count_against_the_node(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M, OTHER], max_concurrency=2)
    await fleet.lease(M)
    await fleet.lease(OTHER)
    assert await fleet.live_leases(reg.node_id) == 2
    assert await fleet.acquire(M, queue_max=0) == Refused("queue_full", queue_length=0)
    assert await fleet.acquire(OTHER, queue_max=0) == Refused("queue_full", queue_length=0)


async def test_heartbeat_changes_capacity(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M], max_concurrency=1)
    await fleet.lease(M)
    assert await fleet.acquire(M, queue_max=0) == Refused("queue_full", queue_length=0)
    await fleet.heartbeat(reg, max_concurrency=2)
    second = await fleet.lease(M, queue_max=0)
    assert second.granted.max_concurrency == 2
    assert await fleet.acquire(M, queue_max=0) == Refused("queue_full", queue_length=0)
    # Shrinking below the in-flight count lets the running requests finish, takes no more.
    await fleet.heartbeat(reg, max_concurrency=1)
    await fleet.release(second)
    assert await fleet.acquire(M, queue_max=0) == Refused("queue_full", queue_length=0)


async def test_unknown_and_uncapable_models(fleet: Fleet) -> None:
    await fleet.register("box-a", [M], installed=[M, "weights-mlx"])
    assert await fleet.acquire("never-seen") == Refused("not_found")
    assert await fleet.acquire("weights-mlx") == Refused("no_capable")
