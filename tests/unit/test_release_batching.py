"""Leases ended without waiting for Redis go out in batches: while one release call waits
for Redis, every lease ended meanwhile joins the next call (the fleet's real dispatcher and
scripts, on the embedded store)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llm_router.fleet import Fleet
from llm_router.routing.select import Dispatcher, Lease
from llm_router.settings import RouterSettings
from llm_router.state.connect import open_store
from llm_router.state.scripts import Ending, Granted


def recording(
    dispatcher: Dispatcher, gate: asyncio.Event, called: asyncio.Event
) -> list[list[str]]:
    """Record each release call's lease ids; the first call waits for ``gate``."""
    scripts: Any = dispatcher._scripts
    real = scripts.release_many
    calls: list[list[str]] = []

    async def release_many(leases: Sequence[Ending], response_ttl_ms: int) -> list[int]:
        calls.append([e.lease_id for e in leases])
        called.set()
        if len(calls) == 1:
            await gate.wait()
        return list(await real(leases, response_ttl_ms))

    scripts.release_many = release_many
    return calls


def held(dispatcher: Dispatcher, lease_id: str) -> Lease:
    granted = Granted(lease_id, "node-1", "127.0.0.1", 9, in_flight=1, max_concurrency=8)
    return dispatcher._hold(granted, queued_ms=None)


async def test_leases_ended_during_a_release_go_out_together_next() -> None:
    fleet = Fleet.build(RouterSettings(auth_disabled=True), open_store(None))
    dispatcher = fleet.dispatcher
    gate, called = asyncio.Event(), asyncio.Event()
    calls = recording(dispatcher, gate, called)

    dispatcher.release_soon(held(dispatcher, "a"))
    dispatcher.release_soon(held(dispatcher, "b"))  # the same loop turn: the same call
    await called.wait()
    for lease_id in ("c", "d", "e"):  # each in a turn of its own, while "a b" waits
        dispatcher.release_soon(held(dispatcher, lease_id))
        await asyncio.sleep(0)
    assert calls == [["a", "b"]]
    gate.set()
    await dispatcher.stop()
    assert calls == [["a", "b"], ["c", "d", "e"]]
    assert dispatcher.held == 0

    # Idle again: the next release starts a flush of its own at once.
    dispatcher.release_soon(held(dispatcher, "f"))
    await dispatcher.stop()
    assert calls[-1] == ["f"]


async def test_a_release_leaves_in_the_loop_turn_after_the_one_that_ended_it() -> None:
    fleet = Fleet.build(RouterSettings(auth_disabled=True), open_store(None))
    dispatcher = fleet.dispatcher
    gate, called = asyncio.Event(), asyncio.Event()
    calls = recording(dispatcher, gate, called)
    gate.set()

    dispatcher.release_soon(held(dispatcher, "a"))
    dispatcher.release_soon(held(dispatcher, "b"))
    await asyncio.sleep(0)  # one turn: the flush's first step has run, and called Redis
    assert calls == [["a", "b"]]
    await dispatcher.stop()
    assert dispatcher.held == 0
