"""The fleet-wide FIFO queue through real processes.

One simulated node with a single slot serves every model here; three replicas share its
Redis and differ only in their queue settings (the limits are each replica's own):

    main   queue_max 256, queue_timeout 10 s
    tight  queue_max 1
    short  queue_timeout 1 s

A request's length is set with ``max_tokens``: the node makes 20 tokens a second, so
``max_tokens = n`` holds the slot for about ``(n - 1) * 50 ms``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from integration.conftest import open_cluster
from integration.probes import ConcurrencyProbe, SdkClients, chat_body, error_of, retry_after
from integration.procs import Cluster, Router
from llm_router.state.keys import Keys

pytestmark = pytest.mark.redis

TOKENS_PER_S = 20


def tokens_for(seconds: float) -> int:
    return round(seconds * TOKENS_PER_S) + 1


class Fleet:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.main = cluster.start_router(queue_timeout_s=10)
        self.tight = cluster.start_router(queue_max=1, queue_timeout_s=10)
        self.short = cluster.start_router(queue_timeout_s=1)
        self.node = cluster.start_node(
            ["q-fifo", "q-full", "q-timeout", "q-gone"],
            backend="metal",
            max_concurrency=1,
            ttft_ms=5,
            tokens_per_s=TOKENS_PER_S,
        )
        self.node_id = cluster.wait_all()[self.node.machine_name]
        self.keys = Keys(cluster.key_prefix)


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with open_cluster(redis_url) as cluster:
        yield Fleet(cluster)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # One client made up front: building one per call costs enough CPU to skew arrivals.
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def post(
    http: httpx.AsyncClient, router: Router, model: str, seconds: float
) -> httpx.Response:
    return await http.post(
        f"{router.api_base}/chat/completions",
        json=chat_body(model, max_tokens=tokens_for(seconds)),
    )


async def later(delay_s: float, call: Any) -> Any:
    await asyncio.sleep(delay_s)
    return await call


async def test_one_slot_three_callers_all_served_in_arrival_order(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    async with ConcurrencyProbe(fleet.node) as probe:
        first, second, third = await asyncio.gather(
            post(http, fleet.main, "q-fifo", 0.4),
            later(0.1, post(http, fleet.main, "q-fifo", 0.4)),
            later(0.2, post(http, fleet.main, "q-fifo", 0.4)),
        )
    # A 429 here would be the node refusing a request beyond its capacity.
    assert [r.status_code for r in (first, second, third)] == [200, 200, 200]
    assert probe.samples > 10
    assert probe.peak == 1
    # The simulated runtime numbers replies in the order it starts them.
    order = [int(r.json()["id"].rsplit("-", 1)[1]) for r in (first, second, third)]
    assert order == sorted(order), order
    assert "x-queue-status" not in first.headers
    waits = []
    for waited in (second, third):
        assert waited.headers["x-queue-status"] == "queued"
        waits.append(int(waited.headers["x-queue-wait-ms"]))
        assert waited.headers["x-llm-router-node"] == fleet.node_id
    # The third waited for both others; the second only for the first.
    assert 0 < waits[0] < waits[1], waits


async def test_one_slot_with_the_sdk_across_replicas(
    fleet: Fleet, http: httpx.AsyncClient, sdk: SdkClients
) -> None:
    # The same through the official client, three callers on three replicas at once.
    async def one(router: Router) -> str:
        raw = await sdk(router).chat.completions.with_raw_response.create(
            model="q-fifo",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=tokens_for(0.2),
        )
        raw.parse()
        return raw.headers.get("x-queue-status", "")

    async with ConcurrencyProbe(fleet.node) as probe:
        statuses = await asyncio.gather(*(one(r) for r in (fleet.main, fleet.short, fleet.main)))
    assert probe.peak == 1
    assert sorted(statuses) == ["", "queued", "queued"]


async def test_queue_full_is_429_with_retry_after(
    fleet: Fleet, http: httpx.AsyncClient, sdk: SdkClients
) -> None:
    holder = asyncio.create_task(post(http, fleet.tight, "q-full", 1.0))
    await asyncio.sleep(0.2)
    waiter = asyncio.create_task(post(http, fleet.tight, "q-full", 0.1))
    await asyncio.sleep(0.2)
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk(fleet.tight).chat.completions.create(
            model="q-full", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "queue_full"
    retry_after(caught.value.response.headers)
    assert (await holder).status_code == 200
    served = await waiter
    assert served.status_code == 200
    assert served.headers["x-queue-status"] == "queued"


async def test_queue_timeout_is_504(fleet: Fleet, http: httpx.AsyncClient) -> None:
    holder = asyncio.create_task(post(http, fleet.main, "q-timeout", 2.5))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    response = await post(http, fleet.short, "q-timeout", 0.1)
    waited = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert error_of(response)["code"] == "queue_timeout"
    assert 0.9 < waited < 2.2, waited
    assert (await holder).status_code == 200
    # The timed-out waiter left no ticket behind.
    client = aioredis.from_url(fleet.cluster.redis_url)
    try:
        assert await client.zcard(fleet.keys.queue("q-timeout")) == 0
    finally:
        await client.aclose()


async def test_client_that_disconnects_while_queued_frees_its_place(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    client = aioredis.from_url(fleet.cluster.redis_url)
    queue = fleet.keys.queue("q-gone")
    tasks: list[asyncio.Task[httpx.Response]] = []
    try:
        holder = asyncio.create_task(post(http, fleet.main, "q-gone", 1.0))
        tasks.append(holder)
        await asyncio.sleep(0.15)
        # The one who leaves asks for a long reply: served by mistake, it would hold the
        # slot for 3 s and the caller behind it would wait for that.
        leaver = asyncio.create_task(post(http, fleet.main, "q-gone", 3.0))
        tasks.append(leaver)
        await asyncio.sleep(0.15)
        started = time.monotonic()
        behind = asyncio.create_task(post(http, fleet.main, "q-gone", 0.1))
        tasks.append(behind)
        await asyncio.sleep(0.2)
        assert await client.zcard(queue) == 2
        leaver.cancel()  # closes the connection while the request is queued
        await asyncio.sleep(0.3)
        assert await client.zcard(queue) == 1
        assert (await holder).status_code == 200
        served = await behind
        assert served.status_code == 200
        assert served.headers["x-queue-status"] == "queued"
        # Served when the holder finished, not after the abandoned request's 3 s.
        assert time.monotonic() - started < 2.0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
