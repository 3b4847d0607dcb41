"""A bounded soak with random faults: two replicas, flaky and dying nodes, mixed traffic.

Every request must get exactly one response (no client-side timeout, no dropped
connection), counted by outcome; a stream ends with ``[DONE]`` or one error event; and
when the traffic stops, no lease and no queue ticket is left in Redis.

The default run soaks for a few seconds; ``LLM_ROUTER_SOAK_S=300 pytest tests/fault/test_soak.py``
soaks for five minutes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fault.harness import fleet_counts
from integration.conftest import open_cluster
from integration.procs import Cluster, SimNode, wait_until

MODEL = "soak-model"
SOAK_S = float(os.environ.get("LLM_ROUTER_SOAK_S", "6"))
CLIENTS = 12
ALLOWED = {200, 429, 502, 503, 504}


@pytest.fixture
def fleet(redis_url: str) -> Iterator[Cluster]:
    with open_cluster(redis_url) as cluster:
        yield cluster


async def one_request(http: httpx.AsyncClient, url: str, rng: random.Random) -> str:
    stream = rng.random() < 0.5
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "soak"}],
        "max_tokens": rng.randint(1, 24),
        "stream": stream,
    }
    if not stream:
        response = await http.post(f"{url}/v1/chat/completions", json=body)
        assert response.status_code in ALLOWED, response.text
        if response.status_code != 200:
            assert set(response.json()) == {"error"}, response.text
        return str(response.status_code)
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        assert response.status_code in ALLOWED
        raw = (await response.aread()).decode()
    if response.status_code != 200:
        return str(response.status_code)
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e.strip()]
    assert events, "an empty stream"
    if events[-1] == "[DONE]":
        return "200 stream"
    final = json.loads(events[-1])
    assert set(final) == {"error"}, events[-1]
    return "200 stream+error"


async def client_loop(
    url_of: Any, until: float, seed: int, outcomes: collections.Counter[str]
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=60) as http:
        while time.monotonic() < until:
            outcomes[await one_request(http, url_of(rng), rng)] += 1


def test_soak_with_random_faults(fleet: Cluster, redis_url: str) -> None:
    import redis

    routers = fleet.up(2, exclusion_cooldown_s=1, first_byte_timeout_s=5, queue_timeout_s=5)
    flaky = {"fail_mode": "midstream", "fail_rate": 0.2}
    nodes: list[SimNode] = [
        fleet.start_node([MODEL], backend="cuda", max_concurrency=3, router=routers[i % 2])
        for i in range(2)
    ]
    nodes.append(fleet.start_node([MODEL], backend="metal", max_concurrency=2, **flaky))
    for node in nodes:
        fleet.wait_online(node)

    rng = random.Random(7)
    outcomes: collections.Counter[str] = collections.Counter()
    until = time.monotonic() + SOAK_S

    async def faults() -> None:
        while time.monotonic() < until - 1:
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            victim = rng.choice([n for n in nodes if n.proc.alive])
            victim.proc.kill()  # dies with whatever it was serving
            outcomes["fault: node killed"] += 1
            replacement = await asyncio.to_thread(
                fleet.start_node, [MODEL], backend="cpu", max_concurrency=2,
                router=rng.choice(routers),
            )  # fmt: skip
            nodes.append(replacement)

    async def main() -> None:
        url_of = lambda r: rng.choice(routers).url  # noqa: E731
        await asyncio.gather(
            faults(), *(client_loop(url_of, until, seed, outcomes) for seed in range(CLIENTS))
        )

    asyncio.run(main())
    print("soak outcomes:", dict(outcomes))
    served = sum(v for k, v in outcomes.items() if k.startswith("200"))
    assert served > 0, outcomes
    assert all(r.proc.alive for r in routers)

    client = redis.Redis.from_url(redis_url)
    try:
        # Released at once when requests end; anything a dead node's stream held is gone
        # by then too. Leases of requests still finishing expire within their TTL (2 s).
        wait_until(
            lambda: fleet_counts(client, fleet.key_prefix) == {"leases": 0, "tickets": 0},
            5,
            "no lease and no ticket left",
        )
    finally:
        client.close()
