"""An admin drain belongs to the node's identity (machine_name:runtime_port): it survives
re-registration and deletion until undrained, through a real router process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis as redis_client

from integration.conftest import open_cluster
from integration.probes import registration_body
from integration.procs import Cluster, Router

pytestmark = pytest.mark.redis


@pytest.fixture
def fleet(redis_url: str) -> Iterator[tuple[Cluster, Router]]:
    with open_cluster(redis_url) as cluster:
        (router,) = cluster.up()
        yield cluster, router


def register(router: Router, machine: str, model: str) -> httpx.Response:
    return httpx.post(f"{router.url}/v0/nodes", json=registration_body(machine, [model]), timeout=5)


def record(router: Router, node_id: str) -> dict[str, Any]:
    response = httpx.get(f"{router.url}/v0/nodes/{node_id}", timeout=5)
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def chat_status(router: Router, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{router.api_base}/chat/completions", json=body, timeout=10).status_code


def test_a_drain_survives_re_registration_and_deletion(fleet: tuple[Cluster, Router]) -> None:
    _, router = fleet
    first = register(router, "suspect", "m-drain")
    assert first.status_code == 201
    node_id = first.json()["node_id"]
    drained = httpx.post(f"{router.url}/v0/nodes/{node_id}/drain", timeout=5)
    assert drained.status_code == 200

    # The agent restarts: same identity, new token.
    again = register(router, "suspect", "m-drain")
    assert again.status_code == 200 and again.json()["node_id"] == node_id
    assert record(router, node_id)["status"] == "draining"
    assert chat_status(router, "m-drain") == 503

    # Removed, then back under a new id: still drained.
    assert httpx.delete(f"{router.url}/v0/nodes/{node_id}", timeout=5).status_code == 200
    back = register(router, "suspect", "m-drain")
    assert back.status_code == 201
    new_id = back.json()["node_id"]
    assert record(router, new_id)["status"] == "draining"

    assert httpx.post(f"{router.url}/v0/nodes/{new_id}/undrain", timeout=5).status_code == 200
    assert record(router, new_id)["status"] == "online"
    register(router, "suspect", "m-drain")
    assert record(router, new_id)["status"] == "online"


def test_the_admin_api_drains_an_identity_with_no_record(fleet: tuple[Cluster, Router]) -> None:
    _, router = fleet
    drained = httpx.post(f"{router.url}/v0/nodes/later:9000/drain", timeout=5)
    assert drained.status_code == 200, drained.text
    assert drained.json() == {"identity": "later:9000", "status": "draining"}
    joined = register(router, "later", "m-later")
    assert record(router, joined.json()["node_id"])["status"] == "draining"
    httpx.delete(f"{router.url}/v0/nodes/{joined.json()['node_id']}", timeout=5)
    undrained = httpx.post(f"{router.url}/v0/nodes/later:9000/undrain", timeout=5)
    assert undrained.status_code == 200, undrained.text
    assert httpx.post(f"{router.url}/v0/nodes/later:9000/undrain", timeout=5).status_code == 404
    back = register(router, "later", "m-later")
    assert record(router, back.json()["node_id"])["status"] == "online"


def test_re_registration_still_clears_exclusions(fleet: tuple[Cluster, Router]) -> None:
    cluster, router = fleet
    first = register(router, "flaky", "m-excl")
    node_id = first.json()["node_id"]
    client = redis_client.Redis.from_url(cluster.redis_url)
    excluded = f"{{{cluster.key_prefix}}}:excluded:{node_id}"
    client.zadd(excluded, {"m-excl": 10**13})
    assert record(router, node_id)["excluded_models"]
    register(router, "flaky", "m-excl")
    assert record(router, node_id)["excluded_models"] == {}
    client.close()


def fleet_cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_router.cli", "fleet", "--redis-url", cluster.redis_url,
         "--key-prefix", cluster.key_prefix, "--json", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_fleet_cli_drains_an_identity_before_it_registers(
    fleet: tuple[Cluster, Router],
) -> None:
    cluster, router = fleet
    done = fleet_cli(cluster, "drain", "newcomer:9000")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["identity"] == "newcomer:9000"
    joined = register(router, "newcomer", "m-new")
    assert joined.status_code == 201
    assert record(router, joined.json()["node_id"])["status"] == "draining"
    undone = fleet_cli(cluster, "undrain", "newcomer:9000")
    assert undone.returncode == 0, undone.stderr
    # (The CLI takes longer than the test clocks' offline timeout: read the flag itself.)
    assert record(router, joined.json()["node_id"])["draining"] is False
    assert fleet_cli(cluster, "undrain", "stranger:9000").returncode == 1
