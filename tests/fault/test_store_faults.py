"""Redis goes away under a running fleet: bounded 503s, then recovery without restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fault.harness import RestartableRedis
from integration.procs import Cluster, wait_until

SOCKET_TIMEOUT_S = 1.0
HEARTBEAT_S = 0.5
MODEL = "fault-model"


@pytest.fixture
def fleet(own_redis: RestartableRedis) -> Iterator[Cluster]:
    cluster = Cluster(own_redis.url)
    try:
        yield cluster
    finally:
        print(cluster.logs())
        cluster.close()


def chat(url: str, timeout_s: float = 15.0) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout_s)


def assert_store_down(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "state_store_unavailable", error
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text


def routes(url: str) -> bool:
    try:
        return chat(url, timeout_s=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_frozen_store_gives_bounded_503s_and_recovers(
    fleet: Cluster, own_redis: RestartableRedis
) -> None:
    [router] = fleet.up(1, redis_socket_timeout_s=SOCKET_TIMEOUT_S)
    fleet.wait_online(fleet.start_node([MODEL], backend="cuda"))
    assert chat(router.url).status_code == 200

    own_redis.freeze()
    try:
        started = time.monotonic()
        response = chat(router.url)
        elapsed = time.monotonic() - started
        assert_store_down(response)
        # One socket timeout (timeouts are not retried), plus scheduling slack.
        assert elapsed < 2 * SOCKET_TIMEOUT_S, elapsed
        ready = httpx.get(f"{router.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "state_store_unavailable"
    finally:
        own_redis.thaw()

    wait_until(lambda: routes(router.url), 10, "routing to resume after the store thawed")
    assert httpx.get(f"{router.url}/readyz", timeout=5).status_code == 200
    assert router.proc.alive


def test_a_store_restarted_empty_is_refilled_by_the_agents(
    fleet: Cluster, own_redis: RestartableRedis
) -> None:
    [router] = fleet.up(1, redis_socket_timeout_s=SOCKET_TIMEOUT_S)
    nodes = [fleet.start_node([MODEL], backend=b) for b in ("cuda", "metal")]
    for node in nodes:
        fleet.wait_online(node)
    assert chat(router.url).status_code == 200

    own_redis.kill()
    started = time.monotonic()
    assert_store_down(chat(router.url))
    assert time.monotonic() - started < 6 * SOCKET_TIMEOUT_S
    assert httpx.get(f"{router.url}/readyz", timeout=10).status_code == 503

    own_redis.start()  # same port, no data: the fleet was forgotten
    back = time.monotonic()
    wait_until(lambda: routes(router.url), 10, "routing to resume on the empty store")
    resumed_after = time.monotonic() - back
    # An agent learns it was forgotten from its next heartbeat (404) and registers at once;
    # a heartbeat that failed while the store was down makes no difference.
    assert resumed_after < 2 * HEARTBEAT_S + 1.5, resumed_after
    wait_until(lambda: len(fleet.nodes_view()) == 2, 5, "both nodes to re-register")
    assert {r["status"] for r in fleet.nodes_view()} == {"online"}
    assert router.proc.alive and all(n.proc.alive for n in nodes)
