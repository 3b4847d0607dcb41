"""A proxied request's disconnect watch: it cancels the request when its client leaves,
only once it has started watching, and tells that cancellation apart from any other."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llm_router.api.proxied import DisconnectWatch


class _Client:
    """The server's receive channel after the body was read: the next message can only be
    the disconnect, sent when the test says so."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.asked = 0

    async def receive(self) -> dict[str, Any]:
        self.asked += 1
        await self.left.wait()
        return {"type": "http.disconnect"}


async def test_a_client_leaving_cancels_the_request_and_the_watch_says_so() -> None:
    client = _Client()

    async def request() -> str:
        watch = DisconnectWatch(client.receive, after_s=0)  # type: ignore[arg-type]
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if watch.absorb():
                return "client left"
            raise
        finally:
            watch.stop()
        return "answered"

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0.01)
    client.left.set()
    assert await asyncio.wait_for(task, 5) == "client left"
    assert task.cancelling() == 0  # the watch's cancellation was taken back


async def test_nothing_is_watched_before_the_delay_and_stop_ends_the_watch() -> None:
    client = _Client()
    watch = DisconnectWatch(client.receive, after_s=30)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert client.asked == 0  # a short request never reads the channel
    assert watch.stop() is False
    client.left.set()
    await asyncio.sleep(0.01)
    assert client.asked == 0


async def test_a_cancellation_from_elsewhere_is_not_the_clients() -> None:
    client = _Client()
    started = asyncio.Event()

    async def request() -> None:
        watch = DisconnectWatch(client.receive, after_s=0)  # type: ignore[arg-type]
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            assert watch.absorb() is False
            raise
        finally:
            watch.stop()

    task = asyncio.ensure_future(request())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.01)
    assert client.asked == 1  # the watch had started, and was stopped
