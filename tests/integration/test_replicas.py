"""Several router replicas on one Redis sharing one node: no overfill, and leases of a
replica that dies come back by themselves.

Three replicas, one simulated node with ``max_concurrency=2`` and a 300 ms time to first
token. The node's agent counts requests before its runtime can refuse them, and the runtime
answers 429 beyond its capacity, so an overfill shows up both in the sampled peak and as a
429 the router passes through (there is no other node to try).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from integration.conftest import open_cluster
from integration.probes import ConcurrencyProbe, chat_body
from integration.procs import FAST_ROUTER_FLAGS, Cluster, Router, SimNode
from llm_router.state.keys import Keys

pytestmark = [pytest.mark.redis, pytest.mark.slow]

MODEL = "shared-node-model"
LEASE_TTL_S = 2.0


class Fleet:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.routers = [
            cluster.start_router(lease_ttl_s=LEASE_TTL_S, queue_timeout_s=15) for _ in range(3)
        ]
        self.node: SimNode = cluster.start_node(
            [MODEL], backend="cuda", max_concurrency=2, ttft_ms=300, tokens_per_s=200
        )
        self.node_id = cluster.wait_all()[self.node.machine_name]


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with open_cluster(redis_url) as cluster:
        yield Fleet(cluster)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
        yield client


async def chat(http: httpx.AsyncClient, router: Router, **extra: object) -> httpx.Response:
    return await http.post(f"{router.api_base}/chat/completions", json=chat_body(MODEL, **extra))


async def leases_held(http: httpx.AsyncClient, router: Router) -> int:
    text = (await http.get(f"{router.url}/metrics")).text
    found = re.search(r"^llm_router_leases_held (\d+)$", text, re.MULTILINE)
    assert found, text
    return int(found.group(1))


async def test_replicas_never_overfill_the_node(fleet: Fleet, http: httpx.AsyncClient) -> None:
    # 18 requests of ~400 ms each, spread over three replicas, at one node of capacity 2.
    async with ConcurrencyProbe(fleet.node) as probe:
        responses = await asyncio.gather(
            *(chat(http, fleet.routers[i % 3], max_tokens=20) for i in range(18))
        )
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 18, [
        (r.status_code, r.text[:200]) for r in responses if r.status_code != 200
    ]
    assert probe.samples > 20
    assert probe.peak == 2
    assert {r.headers["x-llm-router-node"] for r in responses} == {fleet.node_id}
    assert sum(r.headers.get("x-queue-status") == "queued" for r in responses) >= 12
    for router in fleet.routers:
        assert await leases_held(http, router) == 0


async def test_killed_replica_leases_expire_and_capacity_returns(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    # The node heartbeats to the first replica (its "load balancer"): kill another one.
    *survivors, doomed = fleet.routers
    # Two requests through the doomed replica take both slots (~0.4 s on the node).
    held = [asyncio.create_task(chat(http, doomed, max_tokens=20)) for _ in range(2)]
    deadline = time.monotonic() + 5
    while await leases_held(http, doomed) < 2:
        assert time.monotonic() < deadline, "the doomed replica never held both leases"
        await asyncio.sleep(0.02)
    doomed.proc.signal_group(signal.SIGKILL)
    killed = time.monotonic()
    results = await asyncio.gather(*held, return_exceptions=True)
    assert all(isinstance(r, httpx.HTTPError) for r in results), results

    # The node finishes (or drops) those two within ~0.4 s, but their leases live on in
    # Redis until they expire: a request arriving now waits for that, then is served.
    async with ConcurrencyProbe(fleet.node) as probe:
        first = await chat(http, survivors[0])
        recovered_after = time.monotonic() - killed
        assert first.status_code == 200, first.text
        assert first.headers["x-queue-status"] == "queued"
        assert 0.8 < recovered_after < LEASE_TTL_S + 3.0, recovered_after

        later = await asyncio.gather(*(chat(http, survivors[i % 2]) for i in range(8)))
    assert [r.status_code for r in later] == [200] * 8
    assert probe.peak <= 2


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


async def test_killed_replica_queued_ticket_does_not_block_the_queue(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    keeper = fleet.routers[0]
    doomed = next(r for r in fleet.routers[1:] if r.proc.alive)
    queue = Keys(fleet.cluster.key_prefix).queue(MODEL)
    store = aioredis.from_url(fleet.cluster.redis_url)

    async def slots_taken() -> bool:
        return await leases_held(http, keeper) == 2

    async def queued() -> int:
        return int(await store.zcard(queue))

    async def one_queued() -> bool:
        return await queued() == 1

    async def two_queued() -> bool:
        return await queued() == 2

    try:
        # Both slots busy for ~1 s, then a waiter on the doomed replica heads the queue and
        # one on the keeper stands behind it.
        holders = [asyncio.create_task(chat(http, keeper, max_tokens=141)) for _ in range(2)]
        await eventually(slots_taken, "the holders have both slots")
        ghost = asyncio.create_task(chat(http, doomed))
        await eventually(one_queued, "the doomed replica's request is queued")
        behind = asyncio.create_task(chat(http, keeper))
        await eventually(two_queued, "the second waiter is queued")
        doomed.proc.signal_group(signal.SIGKILL)
        killed = time.monotonic()

        assert [(await h).status_code for h in holders] == [200, 200]
        served = await behind
        # Not stuck behind a dead ticket until its own queue timeout (15 s): the ticket
        # dies once its replica stops renewing it.
        assert served.status_code == 200, served.text
        assert served.headers["x-queue-status"] == "queued"
        ticket_ttl_s = float(FAST_ROUTER_FLAGS["queue_ticket_ttl_s"])
        assert time.monotonic() - killed < ticket_ttl_s + 2.5
        assert isinstance((await asyncio.gather(ghost, return_exceptions=True))[0], Exception)
        assert await queued() == 0
    finally:
        await store.aclose()
