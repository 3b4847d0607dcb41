"""The fair order of the fleet-wide queue: priority bands, weighted tenants, shedding.

Runs on the embedded store and on a real redis-server (the ``store`` fixture). A node with
one slot is kept full; the tests then free the slot once per step and let the head of the
queue take it, so the order the queue serves in is read off directly.
"""

from __future__ import annotations

import asyncio
from typing import Any

from contract.fleet import Fleet, Lease, sleep_ms
from llm_router.routing.queue import CapacityEvents, Waiter
from llm_router.routing.select import Dispatcher, Limits
from llm_router.state.scripts import Granted, KeyWait, Queued, Refused
from llm_router.tenancy import Tenancy

M = "llama-3-8b.gguf"


def tenant(name: str, priority: int = 5, weight: int = 1) -> Tenancy:
    return Tenancy(tenant=name, priority=priority, weight=weight)


async def _full_node(fleet: Fleet) -> Lease:
    await fleet.register("box-a", [M], max_concurrency=1)
    return await fleet.lease(M)


async def _queue(fleet: Fleet, ticket: str, who: Tenancy, **kw: object) -> Queued:
    result = await fleet.acquire(M, ticket=ticket, tenancy=who, **kw)  # type: ignore[arg-type]
    assert isinstance(result, Queued), (ticket, result)
    return result


async def _serve_all(fleet: Fleet, held: Lease, tickets: dict[str, Tenancy]) -> list[str]:
    """Free the slot, let the head take it, repeat: the tickets in the order served."""
    served: list[str] = []
    waiting = dict(tickets)
    while waiting:
        await fleet.release(held)
        granted = [
            (t, r)
            for t, who in waiting.items()
            if isinstance(r := await fleet.acquire(M, ticket=t, tenancy=who), Granted)
        ]
        assert len(granted) == 1, granted  # exactly one waiter, the head, got the slot
        ticket, grant = granted[0]
        served.append(ticket)
        del waiting[ticket]
        held = Lease(grant.node_id, grant.lease_id, grant)
    return served


async def test_a_higher_band_overtakes_everything_queued_below_it(fleet: Fleet) -> None:
    held = await _full_node(fleet)
    low = {f"low{i}": tenant("batch", priority=2) for i in range(3)}
    for t, who in low.items():
        await _queue(fleet, t, who)
    assert (await _queue(fleet, "mid", tenant("team", priority=5))).position == 1
    assert (await _queue(fleet, "high", tenant("chat", priority=9))).position == 1
    assert (await _queue(fleet, "mid", tenant("team", priority=5))).position == 2
    both = {"mid": tenant("team", 5), "high": tenant("chat", 9)}
    served = await _serve_all(fleet, held, {**low, **both})
    assert served == ["high", "mid", "low0", "low1", "low2"]


async def test_equal_weights_alternate_behind_a_backlog(fleet: Fleet) -> None:
    held = await _full_node(fleet)
    tickets = {f"a{i:02d}": tenant("A") for i in range(12)}
    for t, who in tickets.items():
        await _queue(fleet, t, who)
    late = {f"b{i:02d}": tenant("B") for i in range(4)}
    for t, who in late.items():
        await _queue(fleet, t, who)
    served = await _serve_all(fleet, held, {**tickets, **late})
    # B arrived behind twelve of A's, yet the two share the slot turn about: in every pair
    # served while B still waits there is one of each (ties between equal tags go either way).
    for i in range(4):
        assert {served[2 * i][0], served[2 * i + 1][0]} == {"a", "b"}, served
    # FIFO within each tenant.
    assert [t for t in served if t[0] == "a"] == sorted(tickets)
    assert [t for t in served if t[0] == "b"] == sorted(late)


async def test_weights_share_the_slot_in_proportion(fleet: Fleet) -> None:
    held = await _full_node(fleet)
    flood = {f"a{i:02d}": tenant("A", weight=1) for i in range(20)}
    for t, who in flood.items():
        await _queue(fleet, t, who)
    late = {f"b{i:02d}": tenant("B", weight=3) for i in range(6)}
    for t, who in late.items():
        await _queue(fleet, t, who)
    served = await _serve_all(fleet, held, {**flood, **late})
    # The stated bound (docs/scheduling.md): B's k-th request is served after at most
    # floor((k - 1) * w_A / w_B) + 1 of A's requests, however deep A's backlog.
    for k, ticket in enumerate(sorted(late), start=1):
        a_before = sum(1 for t in served[: served.index(ticket)] if t[0] == "a")
        assert a_before <= (k - 1) * 1 // 3 + 1, (k, served)
    # And all of B is through long before A's backlog is.
    assert served.index("b05") <= 7  # six of B and at most two of A


async def test_a_fresh_arrival_ahead_of_the_queue_takes_a_free_slot(fleet: Fleet) -> None:
    held = await _full_node(fleet)
    for i in range(3):
        await _queue(fleet, f"a{i}", tenant("A"))
    await fleet.release(held)
    first = await fleet.acquire(M, ticket="a0", tenancy=tenant("A"))
    assert isinstance(first, Granted)
    await fleet.scripts.release(node_id=first.node_id, lease_id=first.lease_id)
    # The slot is free; A's next waiter has not looked yet. B's first request ranks ahead
    # of A's remaining backlog, so it takes the slot at once instead of queueing.
    assert isinstance(await fleet.acquire(M, ticket="b0", tenancy=tenant("B")), Granted)
    # Another of A's requests does not: it joins the back.
    late_a = await _queue(fleet, "a9", tenant("A"))
    assert late_a.position == 3


async def test_a_full_queue_sheds_the_lowest_bands_last_waiter(fleet: Fleet) -> None:
    held = await _full_node(fleet)
    await _queue(fleet, "low0", tenant("batch", priority=1), queue_max=3)
    await _queue(fleet, "low1", tenant("batch", priority=1), queue_max=3)
    await _queue(fleet, "mid0", tenant("team", priority=5), queue_max=3)
    # Full. The same band as the lowest cannot push anyone out: the arrival is refused.
    refused = await fleet.acquire(M, ticket="low2", tenancy=tenant("other", 1), queue_max=3)
    assert refused == Refused("queue_full", queue_length=3)
    # A higher band takes the place of the lowest band's last waiter.
    high = await _queue(fleet, "high", tenant("chat", priority=8), queue_max=3)
    assert high.position == 1
    queue = await fleet.zmembers(fleet.keys.queue(M))
    assert set(queue) == {"low0", "mid0", "high"}
    assert "low1" not in await fleet.zmembers(fleet.keys.queue_alive(M))
    # The shed waiter hears it at its next look, once; it is not queued again behind.
    shed = await fleet.acquire(M, ticket="low1", tenancy=tenant("batch", 1), queue_max=3)
    assert shed == Refused("shed")
    assert "low1" not in await fleet.zmembers(fleet.keys.queue(M))
    await fleet.release(held)


async def test_the_fair_state_starts_over_when_the_queue_drains(fleet: Fleet) -> None:
    held = await _full_node(fleet)
    for i in range(3):
        await _queue(fleet, f"a{i}", tenant("A"))
    served = await _serve_all(fleet, held, {f"a{i}": tenant("A") for i in range(3)})
    assert served == ["a0", "a1", "a2"]
    # The queue is empty; A's next request is not charged for the backlog it had.
    again = await _queue(fleet, "a3", tenant("A"))
    fresh = await _queue(fleet, "b0", tenant("B"))
    assert again.order == fresh.order  # both start at the band's origin


async def test_dead_tickets_of_every_tenant_stop_blocking(fleet: Fleet) -> None:
    held = await _full_node(fleet)
    await _queue(fleet, "a0", tenant("A", priority=7), ticket_ttl_ms=50)
    await _queue(fleet, "b0", tenant("B", priority=3), ticket_ttl_ms=50)
    await fleet.release(held)
    await sleep_ms(120)
    assert isinstance(await fleet.acquire(M, ticket="c0", tenancy=tenant("C", 0)), Granted)
    assert await fleet.zmembers(fleet.keys.queue(M)) == {}


def limited(n: int, *, refuse: bool = False, name: str = "A") -> Tenancy:
    return Tenancy(tenant=name, key_id=f"key-{name}", max_in_flight=n, refuse_over_limit=refuse)


async def test_max_in_flight_holds_for_the_key_across_the_fleet(fleet: Fleet) -> None:
    await fleet.register("box-a", [M], max_concurrency=4)
    await fleet.register("box-b", [M], max_concurrency=4)
    first = await fleet.acquire(M, tenancy=limited(2))
    second = await fleet.acquire(M, tenancy=limited(2))
    assert isinstance(first, Granted) and isinstance(second, Granted)
    # Free slots everywhere, but the key has two running: the third waits, outside the
    # queue, so it blocks nobody else.
    assert await fleet.acquire(M, ticket="a3", tenancy=limited(2)) == KeyWait(in_flight=2)
    assert await fleet.zmembers(fleet.keys.queue(M)) == {}
    assert isinstance(await fleet.acquire(M, tenancy=limited(2, name="B")), Granted)
    # A key that says so is refused instead.
    refused = await fleet.acquire(M, tenancy=limited(2, refuse=True))
    assert refused == Refused("key_busy", queue_length=2)
    # One of its requests ends: the waiting one runs.
    await fleet.scripts.release(node_id=first.node_id, lease_id=first.lease_id)
    assert isinstance(await fleet.acquire(M, ticket="a3", tenancy=limited(2)), Granted)


async def test_a_dead_replicas_requests_stop_counting_against_the_key(fleet: Fleet) -> None:
    await fleet.register("box-a", [M], max_concurrency=4)
    held = await fleet.acquire(M, tenancy=limited(1), lease_ttl_ms=50)
    assert isinstance(held, Granted)
    assert isinstance(await fleet.acquire(M, tenancy=limited(1)), KeyWait)
    await sleep_ms(120)  # the holder never renews: its lease, and its count, expire
    assert isinstance(await fleet.acquire(M, tenancy=limited(1)), Granted)
    members = await fleet.zmembers(fleet.keys.key_flight("key-A"))
    assert len(members) == 1  # the ended lease's entry was dropped


async def test_a_keys_flight_set_expires_unless_its_requests_run_on(fleet: Fleet) -> None:
    day_ms = 24 * 3600 * 1000
    await fleet.register("box-a", [M], max_concurrency=4)
    first = await fleet.acquire(M, tenancy=limited(2))
    assert isinstance(first, Granted)
    key = fleet.keys.key_flight("key-A")
    # A key nobody uses again leaves nothing behind: its set expires on its own.
    assert 0 < await fleet.redis.pttl(key) <= day_ms
    await fleet.redis.pexpire(key, 60_000)
    # Each look at the key while a request runs pushes the expiry on.
    second = await fleet.acquire(M, tenancy=limited(2))
    assert isinstance(second, Granted)
    assert await fleet.redis.pttl(key) > 60_000
    # Over its limit, a request looks again and again while the two run: each look keeps
    # the set alive as long as they do.
    await fleet.redis.pexpire(key, 60_000)
    assert isinstance(await fleet.acquire(M, ticket="a3", tenancy=limited(2)), KeyWait)
    assert await fleet.redis.pttl(key) > 60_000


async def test_a_head_over_its_key_limit_does_not_block_the_queue(fleet: Fleet) -> None:
    await fleet.register("box-a", [M], max_concurrency=2)
    x1, x2 = await fleet.lease(M), await fleet.lease(M)
    await _queue(fleet, "a1", limited(1))
    await _queue(fleet, "a2", limited(1))
    await _queue(fleet, "b0", tenant("B", priority=3))
    await fleet.release(x1)
    assert isinstance(await fleet.acquire(M, ticket="a1", tenancy=limited(1)), Granted)
    await fleet.release(x2)
    # a2 heads the queue, but its key already has its one request running: it steps out
    # of the queue to wait on its key, and the next in line takes the slot.
    assert isinstance(await fleet.acquire(M, ticket="a2", tenancy=limited(1)), KeyWait)
    assert set(await fleet.zmembers(fleet.keys.queue(M))) == {"b0"}
    assert isinstance(await fleet.acquire(M, ticket="b0", tenancy=tenant("B", 3)), Granted)


async def test_the_waiter_woken_is_the_head_when_tenants_tie(fleet: Fleet) -> None:
    # Two tenants arriving behind nobody start at the same virtual time: equal place tags.
    # The queue breaks the tie by ticket (a sorted set's order), so a replica must wake its
    # waiters in that order too, not in the order they arrived, or the head sleeps until
    # the next poll while the wrong waiter asks.
    held = await _full_node(fleet)
    first = await _queue(fleet, "zz-queued-first", tenant("A"))
    second = await _queue(fleet, "aa-queued-second", tenant("B"))
    assert first.order == second.order
    events = CapacityEvents(pubsub_client=None, channel="unused")
    waiters = [
        Waiter(order=q.order, ticket=t, model=M)
        for t, q in (("zz-queued-first", first), ("aa-queued-second", second))
    ]
    for waiter in waiters:
        events.add(waiter)
    events.notify(M)
    woken = [w.ticket for w in waiters if w.wake.is_set()]
    await fleet.release(held)
    head = [
        w.ticket
        for w, who in zip(waiters, (tenant("A"), tenant("B")), strict=True)
        if isinstance(await fleet.acquire(M, ticket=w.ticket, tenancy=who), Granted)
    ]
    assert woken == head == ["aa-queued-second"]


def test_a_waiter_leaving_takes_only_itself_out_when_tags_tie() -> None:
    events = CapacityEvents(pubsub_client=None, channel="unused")
    stays, leaves = Waiter(order=7, ticket="b", model=M), Waiter(order=7, ticket="a", model=M)
    events.add(stays)
    events.add(leaves)
    events.remove(leaves)
    assert events.tickets() == [(M, "b")]
    assert stays.wake.is_set()  # the one left may now be the head: it looks


class _FreedDuringTheCall:
    """The fleet's scripts, except that the first acquire call that queues has the slot
    freed, and its capacity event heard by this replica, while the answer is on its way
    back: before the request waits anywhere an event could wake it."""

    def __init__(self, fleet: Fleet, events: CapacityEvents, held: Lease) -> None:
        self._fleet, self._events, self._held = fleet, events, held
        self._freed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fleet.scripts, name)

    async def acquire(self, **kw: Any) -> Any:
        result = await self._fleet.scripts.acquire(**kw)
        if isinstance(result, Queued) and not self._freed:
            self._freed = True
            await self._fleet.release(self._held)
            self._events.notify(kw["model"])
        return result


async def test_capacity_freed_while_a_request_joins_the_queue_is_not_missed(
    fleet: Fleet,
) -> None:
    held = await _full_node(fleet)
    events = CapacityEvents(pubsub_client=None, channel="unused")
    limits = Limits(
        lease_ttl_ms=30_000,
        queue_max=64,
        ticket_ttl_ms=30_000,
        forget_ms=600_000,
        retry_after_s=1,
        # No poll and no timeout come to the rescue: only the event can wake it.
        queue_timeout_s=3600,
        poll_interval_s=3600,
    )
    scripts: Any = _FreedDuringTheCall(fleet, events, held)
    dispatcher = Dispatcher(scripts, events, limits)
    # The bound only keeps a missed wake-up from hanging the suite.
    lease = await asyncio.wait_for(dispatcher.acquire(M, tenancy=tenant("A")), 30)
    assert lease.node_id == held.node_id and lease.queued_ms is not None
