"""``/v1/models`` through two real router replicas on one Redis: each replica's cached
list follows the fleet at once (register, delete, backend change), a deleted node's models
are forgotten at once, and one node key cannot inflate the fleet past its bounds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from integration.conftest import open_cluster
from integration.probes import registration_body
from integration.procs import Router

pytestmark = pytest.mark.redis

NODE_KEY = "sk-models-node"
ADMIN_KEY = "sk-models-admin"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
NODE = {"authorization": f"Bearer {NODE_KEY}"}


@pytest.fixture(scope="module")
def replicas(redis_url: str) -> Iterator[list[Router]]:
    with open_cluster(redis_url) as cluster:
        yield cluster.up(
            2,
            node_keys=[NODE_KEY],
            admin_keys=[ADMIN_KEY],
            max_models_per_node=8,
            max_identities_per_node_key=2,
            # Registered nodes stay live through the test without heartbeats.
            node_timeout_s=120,
        )


def register(router: Router, machine: str, models: list[str], **extra: Any) -> httpx.Response:
    body = registration_body(machine, models, **extra)
    return httpx.post(f"{router.url}/v0/nodes", json=body, headers=NODE, timeout=5)


def listed(router: Router) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{router.api_base}/models", timeout=5)
    response.raise_for_status()
    return {entry["id"]: entry for entry in response.json()["data"]}


def test_every_replica_follows_the_fleet_at_once(replicas: list[Router]) -> None:
    a, b = replicas
    assert "m-follow" not in listed(b)  # warm both caches first
    assert "m-follow" not in listed(a)
    reg = register(a, "follow", ["m-follow"])
    assert reg.status_code == 201, reg.text
    assert listed(a) == listed(b)
    assert listed(b)["m-follow"]["backends"] == ["cpu"]

    node_id = reg.json()["node_id"]
    token = reg.json()["node_token"]
    beat = httpx.post(
        f"{a.url}/v0/health",
        json={"node_id": node_id, "cpu_usage": 1, "memory_usage": 1, "active_requests": 0,
              "gpu_backend": "rocm"},
        headers={"x-node-token": token},
        timeout=5,
    )  # fmt: skip
    assert beat.status_code == 200, beat.text
    assert listed(b)["m-follow"]["backends"] == ["rocm"]

    gone = httpx.delete(f"{b.url}/v0/nodes/{node_id}", headers=ADMIN, timeout=5)
    assert gone.status_code == 200
    assert "m-follow" not in listed(a)
    assert "m-follow" not in listed(b)


def test_a_deleted_nodes_models_are_forgotten_at_once(replicas: list[Router]) -> None:
    a, b = replicas
    reg = register(a, "forget", ["m-forget", "m-shared"])
    other = register(a, "keeper", ["m-shared"], runtime_port=9002)
    assert reg.status_code == 201 and other.status_code == 201
    httpx.delete(f"{a.url}/v0/nodes/{reg.json()['node_id']}", headers=ADMIN, timeout=5)
    body = {"model": "m-forget", "messages": [{"role": "user", "content": "hi"}]}
    chat = httpx.post(f"{b.api_base}/chat/completions", json=body, timeout=10)
    assert chat.status_code == 404, chat.text
    assert chat.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{b.api_base}/models/m-forget", timeout=5).status_code == 404
    assert "m-shared" in listed(b)  # another node still executes it
    httpx.delete(f"{a.url}/v0/nodes/{other.json()['node_id']}", headers=ADMIN, timeout=5)


def test_a_node_may_advertise_a_bounded_number_of_models(replicas: list[Router]) -> None:
    refused = register(replicas[0], "greedy", [f"m-greedy-{i}" for i in range(9)])
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "executable_models"
    assert "m-greedy-0" not in listed(replicas[1])


def test_a_node_key_holds_a_bounded_number_of_identities(replicas: list[Router]) -> None:
    a, b = replicas
    held = [register(a, f"inflate{i}", ["m-inflate"]) for i in range(2)]
    assert [r.status_code for r in held] == [201, 201]
    third = register(b, "inflate2", ["m-inflate"])
    assert third.status_code == 403, third.text
    # A held identity may register again; a removed one frees its place.
    assert register(b, "inflate0", ["m-inflate"]).status_code == 200
    node_id = held[0].json()["node_id"]
    assert httpx.delete(f"{a.url}/v0/nodes/{node_id}", headers=ADMIN, timeout=5).status_code == 200
    assert register(b, "inflate2", ["m-inflate"]).status_code == 201
