"""The proxy's per-request deadline keeps ``asyncio.timeout``'s semantics."""

from __future__ import annotations

import asyncio

import pytest

from llm_router.deadline import Deadline


async def test_an_await_past_the_deadline_raises_timeout_error() -> None:
    deadline = Deadline()
    with pytest.raises(TimeoutError), deadline.within(0.01):
        await asyncio.Event().wait()
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0  # nothing left pending
    await asyncio.sleep(0)  # and no stray cancellation arrives later


async def test_an_await_within_the_deadline_returns_and_the_deadline_rearms() -> None:
    deadline = Deadline()
    with deadline.within(30):
        await asyncio.sleep(0)
    # The same deadline, armed for the next phase:
    with pytest.raises(TimeoutError), deadline.within(0.01):
        await asyncio.Event().wait()
    with deadline.within(30):
        assert await asyncio.sleep(0, result="done") == "done"


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    started = asyncio.Event()

    async def waits() -> None:
        with Deadline().within(30):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(waits())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outside_cancellation_racing_the_deadline_is_not_swallowed() -> None:
    """Both fired: the task was cancelled twice, so it must end cancelled, not timed out."""

    async def waits(deadline_holder: list[Deadline]) -> None:
        deadline = Deadline()
        deadline_holder.append(deadline)
        with deadline.within(30):
            await asyncio.Event().wait()

    holder: list[Deadline] = []
    task = asyncio.ensure_future(waits(holder))
    await asyncio.sleep(0)
    holder[0]._expire()  # the timer fires ...
    task.cancel()  # ... and someone else cancels in the same turn
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_deadline_needs_a_task() -> None:
    with pytest.raises(RuntimeError):
        Deadline()
