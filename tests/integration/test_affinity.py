"""Conversation affinity and warm-first through real router replicas on one Redis.

Two replicas, three simulated nodes with two slots each. A conversation's turns go to the
node that served its first turn whichever replica they reach; the pin moves when that node
is full, drained or killed. Warm-first runs against simulated runtimes the test registers
and heartbeats itself, so it can say which model each one holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from integration.conftest import open_cluster
from integration.probes import SdkClients, registration_body
from integration.procs import Cluster, Router, SimNode

pytestmark = [pytest.mark.redis, pytest.mark.slow]

MODEL = "affinity-chat-model"


class Fleet:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.routers = [cluster.start_router(queue_timeout_s=15) for _ in range(2)]
        self.nodes: list[SimNode] = [
            cluster.start_node([MODEL], backend="cuda", max_concurrency=2, tokens_per_s=100)
            for _ in range(3)
        ]
        self.ids = cluster.wait_all()

    def node_of(self, node_id: str) -> SimNode:
        return next(n for n in self.nodes if self.ids[n.machine_name] == node_id)

    def in_flight(self, node_id: str) -> int:
        record = next(r for r in self.cluster.nodes_view() if r["id"] == node_id)
        return int(record["in_flight"])


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with open_cluster(redis_url) as cluster:
        yield Fleet(cluster)


def history(conversation: str, turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You answer in one word."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"{conversation}, question {turn}"})
        if turn < turns - 1:
            messages.append({"role": "assistant", "content": f"answer {turn} " * 50})
    return messages


async def turn(
    client: openai.AsyncOpenAI,
    messages: list[dict[str, str]],
    *,
    max_tokens: int = 2,
    headers: dict[str, str] | None = None,
) -> tuple[str, str | None]:
    """One chat request: (serving node, x-llm-router-affinity)."""
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        extra_headers=headers,
    )
    raw.parse()
    return raw.headers["x-llm-router-node"], raw.headers.get("x-llm-router-affinity")


async def wait_for(predicate: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_turns_follow_their_conversation_across_replicas(
    fleet: Fleet, sdk: SdkClients
) -> None:
    a, b = (sdk(r) for r in fleet.routers)
    homes: dict[str, str] = {}
    for c in range(6):
        name = f"conversation {c}"
        node, affinity = await turn(a, history(name, 1))
        assert affinity == "new"
        homes[name] = node
        for t in range(2, 5):
            # Every other turn through the other replica: the pin lives in Redis.
            via = b if t % 2 == 0 else a
            node, affinity = await turn(via, history(name, t))
            assert (node, affinity) == (homes[name], "hit"), (name, t)
    # Least-loaded placement of first turns spread the conversations over every node.
    assert set(homes.values()) == set(fleet.ids.values())


async def test_pin_moves_off_a_full_node_instead_of_queueing(fleet: Fleet, sdk: SdkClients) -> None:
    client = sdk(fleet.routers[0])
    session = {"x-session-id": "long-running"}
    first = asyncio.create_task(turn(client, history("s", 1), max_tokens=200, headers=session))
    await wait_for(lambda: any(fleet.in_flight(i) == 1 for i in fleet.ids.values()), "turn 1")
    pinned = next(i for i in fleet.ids.values() if fleet.in_flight(i) == 1)
    # Half full, the others idle: within the default margin, the pin holds.
    second = asyncio.create_task(turn(client, history("s", 2), max_tokens=200, headers=session))
    await wait_for(lambda: fleet.in_flight(pinned) == 2, "turn 2 on the pinned node")
    node, affinity = await turn(client, history("s", 3), headers=session)
    assert node != pinned
    assert affinity == "moved"
    assert [await first, await second] == [(pinned, "new"), (pinned, "hit")]
    # The pin moved with the request that could not wait.
    assert await turn(client, history("s", 4), headers=session) == (node, "hit")


async def test_pin_moves_off_a_drained_node(fleet: Fleet, sdk: SdkClients) -> None:
    client = sdk(fleet.routers[1])
    pinned, affinity = await turn(client, history("drained", 1))
    assert affinity == "new"
    admin = fleet.routers[0].url
    async with httpx.AsyncClient(timeout=5) as http:
        (await http.post(f"{admin}/v0/nodes/{pinned}/drain")).raise_for_status()
        try:
            node, affinity = await turn(client, history("drained", 2))
            assert (node != pinned, affinity) == (True, "moved")
        finally:
            (await http.post(f"{admin}/v0/nodes/{pinned}/undrain")).raise_for_status()
    # Back in service, the old node does not win the conversation back: the pin moved.
    assert await turn(client, history("drained", 3)) == (node, "hit")


async def test_opt_out_header_skips_affinity(fleet: Fleet, sdk: SdkClients) -> None:
    client = sdk(fleet.routers[0])
    _, affinity = await turn(
        client, history("opted out", 1), headers={"x-llm-router-affinity": "off"}
    )
    assert affinity is None


async def test_affinity_is_counted_and_explained(fleet: Fleet, sdk: SdkClients) -> None:
    client = sdk(fleet.routers[0])
    await turn(client, history("counted", 1))
    await turn(client, history("counted", 2))
    async with httpx.AsyncClient(timeout=5) as http:
        metrics = (await http.get(f"{fleet.routers[0].url}/metrics")).text
    assert 'llm_router_affinity_total{outcome="hit",cause="none"}' in metrics
    assert 'llm_router_affinity_total{outcome="new",cause="none"}' in metrics

    def explained() -> bool:
        state = httpx.get(f"{fleet.routers[1].url}/dashboard/api/state", timeout=5).json()
        return {"affinity:hit", "affinity:new"} <= {d.get("reason") for d in state["decisions"]}

    await wait_for(explained, "decisions with an affinity reason")


# --- a killed node --------------------------------------------------------------------------


async def test_pin_moves_off_a_killed_node(redis_url: str, sdk: SdkClients) -> None:
    with open_cluster(redis_url) as cluster:
        routers = [cluster.start_router() for _ in range(2)]
        nodes = [cluster.start_node([MODEL], backend="cuda", max_concurrency=2) for _ in range(2)]
        ids = cluster.wait_all()
        a, b = (sdk(r) for r in routers)
        pinned, _ = await turn(a, history("killed", 1))
        next(n for n in nodes if ids[n.machine_name] == pinned).proc.kill()
        # Through the other replica, before the fleet has noticed the node is gone: the
        # attempt fails over and the pin follows the node that answered.
        node, affinity = await turn(b, history("killed", 2))
        assert (node != pinned, affinity) == (True, "moved")
        assert await turn(a, history("killed", 3)) == (node, "hit")


# --- warm first -----------------------------------------------------------------------------


class ManualNode:
    """A simulated runtime registered and heartbeaten by the test through the node API."""

    def __init__(self, router: Router, port: int, name: str) -> None:
        self.router = router
        # Registered with the runtime's own port as its API: the router talks to it directly.
        body = registration_body(name, [MODEL], node_api_port=port, max_concurrency=2)
        answer = httpx.post(f"{router.url}/v0/nodes", json=body, timeout=5)
        answer.raise_for_status()
        self.node_id: str = answer.json()["node_id"]
        self.token: str = answer.json()["node_token"]

    def beat(self, **fields: Any) -> None:
        httpx.post(
            f"{self.router.url}/v0/health",
            json={"node_id": self.node_id, **fields},
            headers={"x-node-token": self.token},
            timeout=5,
        ).raise_for_status()


@pytest.fixture
def warm_cluster(redis_url: str) -> Iterator[tuple[Cluster, Router, list[ManualNode]]]:
    with open_cluster(redis_url) as cluster:
        # Default clocks: the test's own heartbeats keep the nodes alive.
        router = cluster.start_router(heartbeat_interval_s=5, node_timeout_s=30)
        ports = [cluster.start_runtime([MODEL]) for _ in range(2)]
        cluster.wait_ready(router)
        for port in ports:
            url = f"http://127.0.0.1:{port}/v1/models"
            deadline = time.monotonic() + 20
            while True:
                try:
                    httpx.get(url, timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        nodes = [ManualNode(router, port, f"manual{i}") for i, port in enumerate(ports)]
        yield cluster, router, nodes


async def test_warm_node_takes_the_model_it_holds(
    warm_cluster: tuple[Cluster, Router, list[ManualNode]], sdk: SdkClients
) -> None:
    cluster, router, (cold, warm) = warm_cluster
    client = sdk(router)

    def idle() -> bool:
        return all(r["in_flight"] == 0 for r in cluster.nodes_view(router))

    async def serve(name: str) -> str:
        # Each request on an idle fleet (the last one's lease is released after its reply):
        # equally loaded nodes, which would take turns without warm-first.
        await wait_for(idle, "the previous request's release")
        return (await turn(client, history(name, 1)))[0]

    cold.beat(loaded_models=[])
    warm.beat(loaded_models=[MODEL])
    assert [await serve(f"w{i}") for i in range(6)] == [warm.node_id] * 6
    # The runtimes swap models: the next heartbeats move the traffic.
    cold.beat(loaded_models=[MODEL])
    warm.beat(loaded_models=[])
    assert [await serve(f"v{i}") for i in range(6)] == [cold.node_id] * 6
