"""Nodes and replicas die or hang under traffic: the client always gets one clear answer,
and no lease or queue ticket outlives its holder."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fault.harness import BlackHoleNode, fleet_counts, lease_members, queue_members
from integration.conftest import open_cluster
from integration.procs import Cluster, wait_until

MODEL = "fault-model"


@pytest.fixture
def fleet(redis_url: str) -> Iterator[Cluster]:
    with open_cluster(redis_url) as cluster:
        yield cluster


@pytest.fixture
def redis_client(redis_url: str) -> Any:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def body(stream: bool = False, max_tokens: int = 4) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def test_a_node_killed_mid_stream_ends_the_stream_with_an_error_event(
    fleet: Cluster, redis_client: Any
) -> None:
    [router] = fleet.up(1)
    node = fleet.start_node([MODEL], backend="cuda", tokens_per_s=20)
    node_id = fleet.wait_online(node)
    events: list[str] = []
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream(
            "POST", f"{router.url}/v1/chat/completions", json=body(stream=True, max_tokens=400)
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["x-llm-router-node"] == node_id
        buffer = ""
        async for text in response.aiter_text():
            buffer += text
            while "\n\n" in buffer:
                event, buffer = buffer.split("\n\n", 1)
                events.append(event.removeprefix("data: "))
                if len(events) == 3:
                    node.proc.kill()
    assert len(events) > 3, events
    final = json.loads(events[-1])
    assert set(final) == {"error"}, final
    assert {"message", "type", "param", "code"} <= set(final["error"])
    assert all("error" not in json.loads(e) for e in events[:-1] if e != "[DONE]")
    # The lease went with the request, at once: not after its TTL.
    assert fleet_counts(redis_client, fleet.key_prefix)["leases"] == 0
    assert lease_members(redis_client, fleet.key_prefix) == 0


def conversation(opening: str) -> dict[str, Any]:
    return {**body(), "messages": [{"role": "user", "content": opening}]}


def test_a_node_that_never_answers_times_out_and_the_request_fails_over(
    fleet: Cluster,
) -> None:
    [router] = fleet.up(1, first_byte_timeout_s=1.0, exclusion_cooldown_s=30)
    healthy = fleet.start_node([MODEL], backend="cuda")
    healthy_id = fleet.wait_online(healthy)
    hole = BlackHoleNode()
    try:
        # The most capable node on paper, so it is tried first.
        hole.register(router.url, [MODEL], gpu_capability_score=10000)
        hole.keep_alive(router.url, 0.4, gpu_capability_score=10000)
        # A hang may be the request's doing (a long generation): it takes different
        # requests hanging to exclude the node. Each fails over after the timeout. Each is a
        # conversation of its own, or affinity would send the next turns straight to the
        # node that answered the first.
        for i in range(3):
            started = time.monotonic()
            response = httpx.post(
                f"{router.url}/v1/chat/completions", json=conversation(f"q{i}"), timeout=30
            )
            elapsed = time.monotonic() - started
            assert response.status_code == 200, response.text
            assert response.headers["x-llm-router-node"] == healthy_id
            assert 1.0 <= elapsed < 5.0, elapsed
        # Now the hanging node is excluded for the cool-down: the next request does not wait.
        started = time.monotonic()
        again = httpx.post(
            f"{router.url}/v1/chat/completions", json=conversation("again"), timeout=30
        )
        assert again.status_code == 200
        assert again.headers["x-llm-router-node"] == healthy_id
        assert time.monotonic() - started < 1.0
    finally:
        hole.close()


def test_only_a_hanging_node_gives_504_upstream_timeout(fleet: Cluster) -> None:
    [router] = fleet.up(1, first_byte_timeout_s=0.5, max_attempts=2)
    hole = BlackHoleNode()
    try:
        hole.register(router.url, [MODEL])
        hole.keep_alive(router.url, 0.4)
        response = httpx.post(f"{router.url}/v1/chat/completions", json=body(), timeout=30)
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "upstream_timeout"
    finally:
        hole.close()


async def test_a_killed_replica_leaves_nothing_stuck(fleet: Cluster, redis_client: Any) -> None:
    doomed, survivor = fleet.up(2)  # lease and ticket TTLs of 2 s (FAST_ROUTER_FLAGS)
    # The node heartbeats to the survivor (behind a balancer it would simply move over).
    node = fleet.start_node(
        [MODEL], backend="cuda", tokens_per_s=20, max_concurrency=1, router=survivor
    )
    node_id = fleet.wait_online(node)

    async def hold(url: str) -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            try:
                async with http.stream(
                    "POST", f"{url}/v1/chat/completions", json=body(stream=True, max_tokens=80)
                ) as response:
                    async for _ in response.aiter_bytes():
                        pass
            except httpx.HTTPError:
                pass

    streaming = asyncio.create_task(hold(doomed.url))
    await asyncio.to_thread(
        wait_until,
        lambda: fleet_counts(redis_client, fleet.key_prefix)["leases"] == 1,
        10,
        "the lease",
    )
    queued = [asyncio.create_task(hold(doomed.url)) for _ in range(2)]
    await asyncio.to_thread(
        wait_until,
        lambda: fleet_counts(redis_client, fleet.key_prefix)["tickets"] == 2,
        10,
        "two queued tickets",
    )
    doomed.proc.kill()
    killed_at = time.monotonic()
    await asyncio.gather(streaming, *queued)
    # A stream on the killed replica may still run on the node: the lease bounds how long
    # the fleet believes so. Nothing depends on the dead replica to clean up.
    await asyncio.to_thread(
        wait_until,
        lambda: fleet_counts(redis_client, fleet.key_prefix) == {"leases": 0, "tickets": 0},
        10,
        "the dead replica's lease and tickets to expire",
    )
    assert time.monotonic() - killed_at < 2.0 + 2.0  # TTL + margin

    # The node may still be finishing the dead replica's request (its connection drop takes a
    # moment to reach the runtime);
    # once it is done, the survivor routes to it: nothing in the fleet's state is stuck.
    def survivor_routes() -> bool:
        response = httpx.post(f"{survivor.url}/v1/chat/completions", json=body(), timeout=30)
        return response.status_code == 200 and response.headers["x-llm-router-node"] == node_id

    await asyncio.to_thread(wait_until, survivor_routes, 15, "the survivor to route", 0.2)
    # That acquire pruned the dead tickets from the queue itself.
    assert queue_members(redis_client, fleet.key_prefix) == 0
    assert lease_members(redis_client, fleet.key_prefix) == 0


async def test_a_node_frees_its_slot_when_the_client_goes_away(fleet: Cluster) -> None:
    fleet.up(1)
    node = fleet.start_node([MODEL], backend="cuda", tokens_per_s=20, max_concurrency=1)
    node_id = fleet.wait_online(node)
    node_url = f"http://127.0.0.1:{node.port}"
    auth = {"authorization": f"Bearer {fleet.node_secret(node_id)}"}
    async with httpx.AsyncClient(timeout=30, headers=auth) as http:
        async with http.stream(
            "POST", f"{node_url}/v1/chat/completions", json=body(stream=True, max_tokens=400)
        ) as response:
            async for _ in response.aiter_bytes():
                break  # the client goes away after the first bytes of a 20 s answer
        await asyncio.sleep(1.0)
        again = await http.post(f"{node_url}/v1/chat/completions", json=body())
    assert again.status_code == 200, again.text
