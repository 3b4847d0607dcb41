"""Only the router may use a node (BRIEF §11): the per-node secret, end to end.

Real router processes, real agents (simulated and real ``llm-router node``), real Redis.
The secret is read from Redis here, as any Redis reader could: that is the one place it
lives besides the agent's memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
import redis

from integration.probes import SdkClients, chat_body
from integration.procs import Cluster, free_port, wait_until
from llm_router.asgi_util import Receive, Scope, Send
from llm_router.node.server import make_server, start_server, stop_server
from llm_router.sim.runtime import SimConfig, SimRuntime
from llm_router.state.keys import Keys

MODEL = "hop-model"


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def direct(port: int, secret: str | None = None, scheme: str = "Bearer") -> httpx.Response:
    headers = {"authorization": f"{scheme} {secret}"} if secret is not None else {}
    return httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json=chat_body(MODEL, max_tokens=2),
        headers=headers,
        timeout=10,
    )


def test_a_node_serves_its_router_only(cluster: Cluster, store: redis.Redis) -> None:
    (router,) = cluster.up(1, log_level="debug", access_log=True)
    node = cluster.start_node([MODEL], log_level="debug")
    node_id = cluster.wait_online(node)
    secret = cluster.node_secret(node_id)
    assert secret

    nobody = direct(node.port)
    assert nobody.status_code == 401
    assert nobody.json()["error"]["type"] == "authentication_error"
    assert direct(node.port, "ns_" + "x" * 43).status_code == 401
    assert direct(node.port, secret, scheme="Basic").status_code == 401
    assert httpx.get(f"http://127.0.0.1:{node.port}/healthz", timeout=5).status_code == 200
    assert direct(node.port, secret).status_code == 200

    via_router = httpx.post(f"{router.url}/v1/chat/completions", json=chat_body(MODEL), timeout=10)
    assert via_router.status_code == 200, via_router.text

    # A re-registration (here: the agent finds itself removed) rotates the secret.
    httpx.delete(f"{router.url}/v0/nodes/{node_id}", timeout=5).raise_for_status()
    wait_until(lambda: cluster.record_of(node) is not None, 20, "the agent to re-register")
    new_id = cluster.wait_online(node)
    rotated = cluster.node_secret(new_id)
    assert rotated and rotated != secret
    wait_until(lambda: direct(node.port, rotated).status_code == 200, 10, "the new secret")
    stale = direct(node.port, secret)
    assert stale.status_code == 401, stale.text
    again = httpx.post(f"{router.url}/v1/chat/completions", json=chat_body(MODEL), timeout=10)
    assert again.status_code == 200, again.text

    shown = [
        httpx.get(f"{router.url}/v0/nodes", timeout=5).text,
        httpx.get(f"{router.url}/v0/nodes/{new_id}", timeout=5).text,
        httpx.get(f"{router.url}/dashboard/api/state", timeout=5).text,
    ]
    assert "node_secret" not in shown[1]
    for text in [*shown, cluster.read_logs()]:
        assert secret not in text
        assert rotated not in text


def test_a_stale_secret_fails_the_attempt_without_excluding(
    cluster: Cluster, store: redis.Redis
) -> None:
    (router,) = cluster.up(1)
    node = cluster.start_node([MODEL])
    node_id = cluster.wait_online(node)
    key = Keys(cluster.key_prefix).node(node_id)
    current = cluster.node_secret(node_id)
    # What a replica reads for a lease taken just before the node re-registered.
    store.hset(key, "node_secret", "ns_" + "s" * 43)

    refused = httpx.post(f"{router.url}/v1/chat/completions", json=chat_body(MODEL), timeout=10)
    assert refused.status_code == 502, refused.text  # the node's 401 is not the client's
    assert refused.json()["error"]["type"] != "authentication_error"
    record = cluster.record_of(node)
    assert record is not None and record["excluded_models"] == {}

    store.hset(key, "node_secret", current or "")
    served = httpx.post(f"{router.url}/v1/chat/completions", json=chat_body(MODEL), timeout=10)
    assert served.status_code == 200, served.text


class RecordingRuntime:
    """The simulated runtime, keeping the headers of every request it receives."""

    def __init__(self) -> None:
        self.runtime = SimRuntime(SimConfig(node_name="recorded", models=[MODEL]))
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.runtime(scope, receive, send)


async def test_the_runtime_never_receives_the_secret(
    cluster: Cluster, store: redis.Redis, sdk: SdkClients
) -> None:
    runtime = RecordingRuntime()
    port = free_port()
    server = make_server(runtime, "127.0.0.1", port)
    task = await start_server(server)
    try:
        (router,) = cluster.up(1)
        node = cluster.start_agent(
            f"http://127.0.0.1:{port}", machine_name="recorded", runtime_api_key="rk-runtime"
        )
        node_id = await asyncio.to_thread(cluster.wait_online, node)
        secret = cluster.node_secret(node_id)
        assert secret
        reply = await sdk(router).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert "recorded" in (reply.choices[0].message.content or "")
    finally:
        await stop_server(server, task)
    chats = [h for h in runtime.seen if "content-type" in h]
    assert chats, runtime.seen
    # The agent swaps the router's secret for the runtime's own key.
    assert [h.get("authorization") for h in chats] == ["Bearer rk-runtime"] * len(chats)
    assert secret not in json.dumps(runtime.seen)
