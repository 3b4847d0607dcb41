"""The fleet-wide FIFO queue per model: order, bounds, dead tickets, wake-up events.

Runs on the embedded store and on a real redis-server (the ``store`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from contract.fleet import Fleet, Lease, sleep_ms
from llm_router.routing.queue import CapacityEvents, Waiter
from llm_router.state.scripts import Granted, Queued, Refused
from llm_router.tenancy import Tenancy

M = "llama-3-8b.gguf"
OTHER = "qwen2-7b.gguf"


async def _full_node(fleet: Fleet, models: list[str] | None = None) -> Lease:
    """One node with one slot, already taken."""
    await fleet.register("box-a", models or [M], max_concurrency=1)
    return await fleet.lease((models or [M])[0])


async def test_arrivals_queue_in_order(fleet: Fleet) -> None:
    await _full_node(fleet)
    first = await fleet.acquire(M, ticket="t1")
    second = await fleet.acquire(M, ticket="t2")
    assert isinstance(first, Queued) and first.position == 1
    assert isinstance(second, Queued) and second.position == 2
    assert second.order > first.order
    # Asking again keeps the place and the arrival time.
    assert await fleet.acquire(M, ticket="t1") == first
    assert await fleet.acquire(M, ticket="t2") == second


async def test_head_gets_the_freed_slot_and_others_wait(fleet: Fleet) -> None:
    held = await _full_node(fleet)
    await fleet.acquire(M, ticket="t1")
    await fleet.acquire(M, ticket="t2")
    await fleet.release(held)

    # A slot is free, but t2 is not at the head: FIFO holds.
    behind = await fleet.acquire(M, ticket="t2")
    assert isinstance(behind, Queued) and behind.position == 2
    # A fresh arrival does not jump the queue either.
    fresh = await fleet.acquire(M, ticket="t3")
    assert isinstance(fresh, Queued) and fresh.position == 3

    head = await fleet.acquire(M, ticket="t1", lease_id="l1")
    assert isinstance(head, Granted)
    queue = await fleet.zmembers(fleet.keys.queue(M))
    assert set(queue) == {"t2", "t3"}
    assert "t1" not in await fleet.zmembers(fleet.keys.queue_alive(M))

    # t2 is the head now, but the only slot is taken again.
    now_head = await fleet.acquire(M, ticket="t2")
    assert isinstance(now_head, Queued) and now_head.position == 1
    await fleet.scripts.release(node_id=head.node_id, lease_id="l1")
    assert isinstance(await fleet.acquire(M, ticket="t2"), Granted)
    last = await fleet.acquire(M, ticket="t3")
    assert isinstance(last, Queued) and last.position == 1


async def test_queue_is_per_model(fleet: Fleet) -> None:
    await fleet.register("box-a", [M], max_concurrency=1)
    await fleet.register("box-b", [OTHER], max_concurrency=1)
    await fleet.lease(M)
    assert isinstance(await fleet.acquire(M, ticket="t1"), Queued)
    # Someone waits for M; OTHER has its own (empty) queue and a free node.
    assert isinstance(await fleet.acquire(OTHER, ticket="t2"), Granted)


async def test_queue_max_refuses_fresh_arrivals_only(fleet: Fleet) -> None:
    await _full_node(fleet)
    assert isinstance(await fleet.acquire(M, ticket="t1", queue_max=2), Queued)
    assert isinstance(await fleet.acquire(M, ticket="t2", queue_max=2), Queued)
    refused = await fleet.acquire(M, ticket="t3", queue_max=2)
    assert refused == Refused("queue_full", queue_length=2)
    assert "t3" not in await fleet.zmembers(fleet.keys.queue(M))
    # Those already in line keep their place when they ask again.
    again = await fleet.acquire(M, ticket="t2", queue_max=2)
    assert isinstance(again, Queued) and again.position == 2


async def test_queue_max_zero_never_queues(fleet: Fleet) -> None:
    await _full_node(fleet)
    assert await fleet.acquire(M, queue_max=0) == Refused("queue_full", queue_length=0)
    assert await fleet.redis.exists(fleet.keys.queue(M)) == 0


async def test_dead_ticket_stops_blocking_the_head(fleet: Fleet) -> None:
    held = await _full_node(fleet)
    await fleet.acquire(M, ticket="dies", ticket_ttl_ms=100)
    await fleet.acquire(M, ticket="lives", ticket_ttl_ms=30_000)
    await sleep_ms(150)

    waiting = await fleet.acquire(M, ticket="lives")
    assert isinstance(waiting, Queued) and waiting.position == 1
    assert set(await fleet.zmembers(fleet.keys.queue(M))) == {"lives"}
    await fleet.release(held)
    assert isinstance(await fleet.acquire(M, ticket="lives"), Granted)
    # The dead waiter coming back late is a fresh arrival, at the back.
    late = await fleet.acquire(M, ticket="dies")
    assert isinstance(late, Queued) and late.position == 1


async def test_renewed_ticket_keeps_its_place(fleet: Fleet) -> None:
    held = await _full_node(fleet)
    await fleet.acquire(M, ticket="t1", ticket_ttl_ms=300)
    await fleet.acquire(M, ticket="t2", ticket_ttl_ms=30_000)
    await sleep_ms(150)
    renewed = await fleet.scripts.renew(
        lease_ttl_ms=30_000, ticket_ttl_ms=300, leases=[], tickets=[(M, "t1")]
    )
    assert renewed == (0, 1)
    await sleep_ms(250)  # past t1's first deadline, before the renewed one
    behind = await fleet.acquire(M, ticket="t2")
    assert isinstance(behind, Queued) and behind.position == 2
    await fleet.release(held)
    assert isinstance(await fleet.acquire(M, ticket="t1"), Granted)


async def test_renew_does_not_revive_a_dead_ticket(fleet: Fleet) -> None:
    await _full_node(fleet)
    await fleet.acquire(M, ticket="t1", ticket_ttl_ms=100)
    await fleet.acquire(M, ticket="t2")
    await sleep_ms(150)
    renewed = await fleet.scripts.renew(
        lease_ttl_ms=30_000, ticket_ttl_ms=30_000, leases=[], tickets=[(M, "t1")]
    )
    assert renewed == (0, 0)
    at_head = await fleet.acquire(M, ticket="t2")
    assert isinstance(at_head, Queued) and at_head.position == 1


async def test_leave_queue(fleet: Fleet) -> None:
    await _full_node(fleet)
    await fleet.acquire(M, ticket="t1")
    await fleet.acquire(M, ticket="t2")
    assert await fleet.scripts.leave_queue(model=M, ticket="t1") is True
    assert await fleet.scripts.leave_queue(model=M, ticket="t1") is False
    assert "t1" not in await fleet.zmembers(fleet.keys.queue_alive(M))
    moved_up = await fleet.acquire(M, ticket="t2")
    assert isinstance(moved_up, Queued) and moved_up.position == 1


async def test_waiter_leaves_when_no_capable_node_is_left(fleet: Fleet) -> None:
    held = await _full_node(fleet)
    await fleet.acquire(M, ticket="t1")
    assert await fleet.registry.drain(held.node_id)
    assert await fleet.acquire(M, ticket="t1") == Refused("no_capable")
    assert await fleet.redis.exists(fleet.keys.queue(M)) == 0


async def test_queue_of_one_model_does_not_leak_into_a_look_alike(fleet: Fleet) -> None:
    """Model ids may contain ':'; a model named "<m>:alive" is still its own model."""
    await _full_node(fleet)
    assert isinstance(await fleet.acquire(M, ticket="t1"), Queued)
    assert await fleet.acquire(f"{M}:alive", ticket="t2") == Refused("not_found")
    assert set(await fleet.zmembers(fleet.keys.queue_alive(M))) == {"t1"}


# --- wake-up events ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _subscribed(fleet: Fleet) -> AsyncIterator[Any]:
    pubsub = fleet.store.pubsub_client().pubsub()
    await pubsub.subscribe(fleet.keys.events)
    # Wait for the confirmation so no publish can slip in before the subscription is live.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=0.1)
        if message and message["type"] == "subscribe":
            break
    else:
        pytest.fail("no subscribe confirmation on the events channel")
    try:
        yield pubsub
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()


async def _events(pubsub: Any, within_s: float, *, expect: int = 0) -> list[str]:
    """Models published on the channel: wait up to ``within_s`` for ``expect`` of them,
    then a little longer so that an unexpected extra one is seen too."""
    seen: list[str] = []
    deadline = time.monotonic() + within_s
    while (remaining := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
        if message and message["type"] == "message":
            data = message["data"]
            seen.append(data.decode() if isinstance(data, bytes) else data)
            if expect and len(seen) == expect:
                deadline = min(deadline, time.monotonic() + 0.05)
        elif message is None:
            await asyncio.sleep(0.01)
    return seen


async def test_release_publishes_the_model_when_someone_waits(fleet: Fleet) -> None:
    held = await _full_node(fleet, [M, OTHER])
    await fleet.acquire(M, ticket="t1")
    async with _subscribed(fleet) as pubsub:
        await fleet.release(held)
        assert await _events(pubsub, 1.0, expect=1) == [M]


async def test_release_publishes_nothing_when_nobody_waits(fleet: Fleet) -> None:
    held = await _full_node(fleet, [M, OTHER])
    async with _subscribed(fleet) as pubsub:
        await fleet.release(held)
        lease = await fleet.lease(M)
        await fleet.release(lease, exclude_model=M, cooldown_ms=10)
        assert await _events(pubsub, 0.15) == []


async def test_a_waiter_shed_from_a_full_queue_is_told_by_an_event(fleet: Fleet) -> None:
    await _full_node(fleet)
    low = Tenancy(tenant="batch", priority=1)
    assert isinstance(await fleet.acquire(M, ticket="low", tenancy=low, queue_max=1), Queued)
    async with _subscribed(fleet) as pubsub:
        high = Tenancy(tenant="chat", priority=8)
        assert isinstance(await fleet.acquire(M, ticket="high", tenancy=high, queue_max=1), Queued)
        # The shed ticket itself, on the capacity channel: its replica wakes that waiter.
        assert await _events(pubsub, 1.0, expect=1) == ["low"]


async def test_a_shed_ticket_wakes_its_own_waiter_wherever_it_stands() -> None:
    events = CapacityEvents(pubsub_client=None, channel="unused")
    first, last = Waiter(order=1, ticket="t1", model=M), Waiter(order=9, ticket="t9", model=M)
    events.add(first)
    events.add(last)
    events.notify("t9")
    assert last.wake.is_set() and not first.wake.is_set()


async def test_head_leaving_wakes_the_next_waiter(fleet: Fleet) -> None:
    await _full_node(fleet)
    await fleet.acquire(M, ticket="t1")
    await fleet.acquire(M, ticket="t2")
    async with _subscribed(fleet) as pubsub:
        await fleet.scripts.leave_queue(model=M, ticket="t2")
        assert await _events(pubsub, 0.15) == []
        await fleet.scripts.leave_queue(model=M, ticket="t1")
        # Nobody left behind the head: nothing to wake.
        assert await _events(pubsub, 0.15) == []
        await fleet.acquire(M, ticket="t3")
        await fleet.acquire(M, ticket="t4")
        await fleet.scripts.leave_queue(model=M, ticket="t3")
        assert await _events(pubsub, 1.0, expect=1) == [M]
