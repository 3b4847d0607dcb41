"""Priorities and tenant fairness in the fleet-wide queue, through real processes.

Two router replicas share one Redis and one simulated node with two slots; API keys are
managed keys with tenants, created in Redis before the routers start. A request holds a
slot for about ``(max_tokens - 1) * 10 ms`` (70 ms here); the runtime numbers its replies
in the order it starts them, which is the order the queue served them in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from integration.conftest import open_cluster
from integration.probes import chat_body, error_of
from integration.procs import Cluster, Router
from llm_router.auth import ManagedKey, Scope
from llm_router.security.managed_keys import ManagedKeyStore
from llm_router.state.keys import Keys

pytestmark = pytest.mark.redis

MODEL = "tenant-model"
FLOOD = 200
LATE = 10


class Fleet:
    def __init__(self, cluster: Cluster, keys: dict[str, str]) -> None:
        self.cluster = cluster
        self.key = keys
        self.routers = [cluster.start_router(queue_timeout_s=60, queue_max=400) for _ in range(2)]
        self.node = cluster.start_node(
            [MODEL], backend="metal", max_concurrency=2, ttft_ms=2, tokens_per_s=100
        )
        cluster.wait_all()
        self.keys = Keys(cluster.key_prefix)
        self.warmed = False
        self.depth_at_arrival = 0

    async def warm_up(self, http: httpx.AsyncClient) -> None:
        """One request per replica first: a replica's first calls load the scripts, and a
        cold replica hit by a hundred requests at once would load them a hundred times."""
        if not self.warmed:
            for router in self.routers:
                await post(http, router, self.key["a"])
            self.warmed = True


async def _make_keys(redis_url: str, prefix: str) -> dict[str, str]:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        store = ManagedKeyStore(redis, Keys(prefix))
        made = {}
        for label, tenant, priority, weight in [
            ("a", "team-a", 5, 1),
            ("b", "team-b", 5, 1),
            ("b2", "team-b2", 5, 2),
            ("high", "on-call", 9, 1),
        ]:
            queueing = ManagedKey(Scope.API, "", 0, tenant=tenant, priority=priority, weight=weight)
            made[label], _ = await store.create(Scope.API, name=label, queueing=queueing)
        one_at_a_time = ManagedKey(Scope.API, "", 0, max_in_flight=1, refuse_over_limit=True)
        made["single"], _ = await store.create(Scope.API, name="single", queueing=one_at_a_time)
        return made
    finally:
        await redis.aclose()


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with open_cluster(redis_url) as cluster:
        keys = asyncio.run(_make_keys(redis_url, cluster.key_prefix))
        yield Fleet(cluster, keys)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=90, limits=limits) as client:
        yield client


async def post(
    http: httpx.AsyncClient, router: Router, key: str, tokens: int = 8, **headers: str
) -> httpx.Response:
    return await http.post(
        f"{router.api_base}/chat/completions",
        json=chat_body(MODEL, max_tokens=tokens),
        headers={"authorization": f"Bearer {key}", **headers},
    )


def started(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(response.json()["id"].rsplit("-", 1)[1])


async def queue_depth(fleet: Fleet) -> int:
    redis = aioredis.Redis.from_url(fleet.cluster.redis_url)
    try:
        return int(await redis.zcard(fleet.keys.queue(MODEL)))
    finally:
        await redis.aclose()


async def wait_for_depth(fleet: Fleet, depth: int) -> None:
    for _ in range(600):
        if await queue_depth(fleet) >= depth:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the queue never reached {depth}")


async def flood_then(
    fleet: Fleet, http: httpx.AsyncClient, late_key: str, late: int, **headers: str
) -> tuple[list[int], list[int], list[httpx.Response]]:
    """Tenant A floods; once its backlog is deep, ``late`` requests of another key arrive.
    Returns where A's and the late requests started, and the late responses."""
    await fleet.warm_up(http)
    a_calls = [
        asyncio.ensure_future(post(http, fleet.routers[i % 2], fleet.key["a"]))
        for i in range(FLOOD)
    ]
    await wait_for_depth(fleet, FLOOD // 2)
    fleet.depth_at_arrival = await queue_depth(fleet)
    late_calls = [post(http, fleet.routers[i % 2], late_key, **headers) for i in range(late)]
    late_done = await asyncio.gather(*late_calls)
    a_done = await asyncio.gather(*a_calls)
    return [started(r) for r in a_done], [started(r) for r in late_done], late_done


async def test_a_late_tenant_gets_its_weighted_share_not_the_back_of_a_flood(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    a, b, replies = await flood_then(fleet, http, fleet.key["b"], LATE)
    first_b = min(b)
    # A's requests that started after B's first and before B's last. Start-time fair
    # queuing with equal weights serves B's k-th after at most k of A's queued ones
    # (docs/scheduling.md); the slack of 4 covers A's two requests already holding the
    # slots and B's requests reaching the replicas a few milliseconds apart.
    between = [s for s in a if first_b < s < max(b)]
    assert len(between) <= LATE + 4, (sorted(b), len(between))
    # And B did not wait for A's backlog: nearly all of it started after B was done.
    behind = fleet.depth_at_arrival - len(between)
    assert sum(1 for s in a if s > max(b)) >= behind - 2, (sorted(b), behind)
    # B's place tags rank ahead of A's backlog, so a B request that arrives while a slot is
    # momentarily free (released, the head not yet in) takes it without queuing: fair, not a
    # bypass. Most find the slots taken and queue; each entered well ahead of A's backlog.
    queued = [r for r in replies if r.headers.get("x-queue-status") == "queued"]
    assert len(queued) >= LATE // 2, [r.headers.get("x-queue-status") for r in replies]
    positions = [int(r.headers["x-queue-position"]) for r in queued]
    assert max(positions) <= 2 * LATE + 4, positions
    assert {r.headers["x-queue-band"] for r in queued} == {"5"}


async def test_weight_two_gets_two_slots_per_one(fleet: Fleet, http: httpx.AsyncClient) -> None:
    a, b, _ = await flood_then(fleet, http, fleet.key["b2"], LATE)
    between = [s for s in a if min(b) < s < max(b)]
    # Weight 2 against 1: B's k-th after at most (k - 1) / 2 + 1 of A's, plus the slack.
    assert len(between) <= (LATE - 1) // 2 + 1 + 4, (sorted(b), len(between))


async def test_a_higher_band_overtakes_everything_queued_below_it(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    a, high, replies = await flood_then(fleet, http, fleet.key["high"], 3)
    between = [s for s in a if min(high) < s < max(high)]
    assert len(between) <= 2, (sorted(high), len(between))  # only A's arriving mid-batch
    assert sum(1 for s in a if s > max(high)) >= fleet.depth_at_arrival - 4
    assert {r.headers["x-queue-band"] for r in replies} == {"9"}


async def test_a_request_lowered_below_a_flood_waits_for_it(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    # The on-call key asks for band 1: below A's band 5, so behind A's whole backlog.
    a, low, replies = await flood_then(
        fleet, http, fleet.key["high"], 1, **{"x-llm-router-priority": "1"}
    )
    assert low[0] > max(a) - 3, (low, max(a))
    assert replies[0].headers["x-queue-band"] == "1"


async def test_a_replica_killed_holding_tickets_of_both_tenants_blocks_neither(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    victim = fleet.cluster.start_router(queue_timeout_s=60, queue_max=400)
    fleet.cluster.wait_ready(victim)
    survivor = fleet.routers[0]
    # Both slots busy for a while, so whatever comes next queues.
    holders = [
        asyncio.ensure_future(post(http, survivor, fleet.key["a"], tokens=60)) for _ in range(2)
    ]
    await asyncio.sleep(0.2)
    doomed = [
        asyncio.ensure_future(post(http, victim, fleet.key[who])) for who in ("a", "b", "a", "b")
    ]
    await wait_for_depth(fleet, 4)
    redis = aioredis.Redis.from_url(fleet.cluster.redis_url)
    try:
        victims_tickets = set(await redis.zrange(fleet.keys.queue(MODEL), 0, -1))
        victim.proc.kill()  # its four tickets, of both tenants, stay at the head
        after = [post(http, fleet.routers[i % 2], fleet.key[w]) for i, w in enumerate("abab")]
        served = await asyncio.gather(*after)
        assert [r.status_code for r in served] == [200] * 4, [r.text for r in served]
        left = set(await redis.zrange(fleet.keys.queue(MODEL), 0, -1))
        assert not (left & victims_tickets)
    finally:
        await redis.aclose()
    await asyncio.gather(*holders)
    outcomes = await asyncio.gather(*doomed, return_exceptions=True)
    assert all(isinstance(o, httpx.HTTPError) for o in outcomes), outcomes


async def test_a_bad_priority_header_is_a_400_naming_it(
    fleet: Fleet, http: httpx.AsyncClient
) -> None:
    reply = await post(http, fleet.routers[0], fleet.key["a"], **{"x-llm-router-priority": "x"})
    assert reply.status_code == 400
    assert error_of(reply)["param"] == "x-llm-router-priority"


async def test_max_in_flight_refuses_across_replicas(fleet: Fleet, http: httpx.AsyncClient) -> None:
    await fleet.warm_up(http)
    key = fleet.key["single"]
    # One request of the key runs (a stream on replica 0, its first bytes read, so it
    # surely holds its slot); the next, on replica 1, is over the key's fleet-wide limit of
    # one and the key says refuse.
    async with http.stream(
        "POST",
        f"{fleet.routers[0].api_base}/chat/completions",
        json=chat_body(MODEL, max_tokens=80, stream=True),
        headers={"authorization": f"Bearer {key}"},
    ) as running:
        assert running.status_code == 200
        chunks = running.aiter_bytes()
        await chunks.__anext__()
        second = await post(http, fleet.routers[1], key)
        assert second.status_code == 429, second.text
        assert error_of(second)["code"] == "key_in_flight_limit"
        assert "retry-after" in second.headers
        async for _ in chunks:
            pass
    # Its slot comes back once replica 0's release (sent after the reply) reaches Redis.
    for _ in range(200):
        again = await post(http, fleet.routers[1], key)
        if again.status_code != 429:
            break
        await asyncio.sleep(0.01)
    assert again.status_code == 200, again.text
