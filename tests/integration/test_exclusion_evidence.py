"""One request never takes a model offline: a (node, model) pair is excluded fleet-wide only
on evidence that the node is broken — it cannot be reached, or several different requests
failed on it within the window. Two real router replicas on one Redis; hostile nodes on raw
asyncio, simulated nodes as real processes, the official ``openai`` SDK as the client.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import httpx
import openai
import pytest

from integration.conftest import open_cluster
from integration.hostile import Request, fail_500, hostile_node, respond, serve_ok
from integration.probes import chat_body, error_of
from integration.procs import Cluster, Router, free_port

pytestmark = pytest.mark.redis

PREFERRED = {"gpu_capability_score": 10000}
#: Hostile nodes heartbeat from threads of the test process; on a busy machine a beat can
#: be late, and a node that blinked offline would change which nodes a request tries.
#: Without affinity: these tests count which nodes each request tries, and a pin would send
#: a later request straight to the node that served an earlier one.
ROUTER_FLAGS = {"exclusion_cooldown_s": 60, "node_timeout_s": 10, "no_affinity": True}


class Fleet:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.routers: list[Router] = cluster.up(2, **ROUTER_FLAGS)
        self.healthy = cluster.start_node(["ev-broken", "ev-refused", "ev-deep"], backend="cpu")
        self.second = cluster.start_node(["ev-deep"], backend="cpu")
        self.ids = cluster.wait_all()
        self.replica = itertools.cycle(self.routers)

    def client(self, router: Router | None = None, **kw: object) -> openai.OpenAI:
        target = router or next(self.replica)
        return openai.OpenAI(base_url=target.api_base, api_key="x", **kw)  # type: ignore[arg-type]

    def excluded(self, node_id: str, router: Router | None = None) -> dict[str, object]:
        for record in self.cluster.nodes_view(router):
            if record["id"] == node_id:
                excluded: dict[str, object] = record["excluded_models"]
                return excluded
        raise AssertionError(f"{node_id} is not registered")

    def everywhere_excluded(self, node_id: str) -> list[dict[str, object]]:
        return [self.excluded(node_id, router) for router in self.routers]


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with open_cluster(redis_url) as cluster:
        yield Fleet(cluster)


def ask(client: openai.OpenAI, model: str, text: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    assert raw.status_code == 200
    return raw.headers["x-llm-router-node"]


def test_a_poison_request_gets_its_error_and_excludes_nothing(fleet: Fleet) -> None:
    """Every node 500s on the poison; the SDK retries it; other clients never notice."""

    async def poisoned(request: Request, writer: asyncio.StreamWriter) -> None:
        if b"POISON" in request.body:
            await respond(writer, 500, b'{"error": {"message": "runtime crashed"}}')
        else:
            await serve_ok(request, writer)

    with (
        hostile_node(poisoned) as a,
        hostile_node(poisoned) as b,
        hostile_node(poisoned) as c,
    ):
        nodes = [a, b, c]
        for node in nodes:
            node.register(fleet.routers[0].url, ["ev-fragile"])
        # Several different poison requests, each retried by the SDK (2 retries by default),
        # alternating between the replicas.
        for i in range(4):
            with pytest.raises(openai.InternalServerError) as caught:
                fleet.client().chat.completions.create(
                    model="ev-fragile", messages=[{"role": "user", "content": f"POISON {i}"}]
                )
            assert caught.value.status_code == 502
            assert isinstance(caught.value.body, dict)
            assert caught.value.body["code"] == "upstream_error"
        assert sum(n.hits["/v1/chat/completions"] for n in nodes) == 4 * 3 * 3
        served = {ask(fleet.client(max_retries=0), "ev-fragile", f"hello {i}") for i in range(6)}
        assert served == {n.node_id for n in nodes}, "every node still takes requests"
        for node in nodes:
            assert fleet.everywhere_excluded(node.node_id) == [{}, {}]


def test_a_node_failing_three_different_requests_is_excluded_fleet_wide(fleet: Fleet) -> None:
    healthy = fleet.ids[fleet.healthy.machine_name]
    with hostile_node(fail_500) as broken:
        broken.register(fleet.routers[0].url, ["ev-broken"], **PREFERRED)
        for i, router in enumerate([fleet.routers[0], fleet.routers[1]]):
            assert ask(fleet.client(router, max_retries=0), "ev-broken", f"q{i}") == healthy
            assert fleet.everywhere_excluded(broken.node_id) == [{}, {}], f"after {i + 1}"
        # The same request again adds nothing: it is still two different requests.
        assert ask(fleet.client(max_retries=0), "ev-broken", "q1") == healthy
        assert fleet.everywhere_excluded(broken.node_id) == [{}, {}]

        assert ask(fleet.client(fleet.routers[0], max_retries=0), "ev-broken", "q2") == healthy
        assert broken.hits["/v1/chat/completions"] == 4
        for excluded in fleet.everywhere_excluded(broken.node_id):
            assert set(excluded) == {"ev-broken"}
        # Excluded for every replica: the next requests do not even try it.
        for router in fleet.routers:
            assert ask(fleet.client(router, max_retries=0), "ev-broken", "q3") == healthy
        assert broken.hits["/v1/chat/completions"] == 4


def test_an_unreachable_node_is_excluded_at_once(fleet: Fleet) -> None:
    healthy = fleet.ids[fleet.healthy.machine_name]
    with hostile_node(serve_ok) as node:
        node.register(fleet.routers[0].url, ["ev-refused"], **PREFERRED)
        node.close()  # registered and heartbeating no more; its port now refuses
        assert ask(fleet.client(fleet.routers[0], max_retries=0), "ev-refused", "x") == healthy
        for excluded in fleet.everywhere_excluded(node.node_id):
            assert set(excluded) == {"ev-refused"}


def test_an_unreachable_node_is_named_by_id_never_by_address(fleet: Fleet) -> None:
    port = free_port()
    registered = httpx.post(
        f"{fleet.routers[0].url}/v0/nodes",
        json={
            "machine_name": "nobody-home",
            "ip_address": "127.0.0.1",
            "runtime_port": port - 1,
            "node_api_port": port,
            "gpu_backend": "cuda",
            "executable_models": ["ev-nobody"],
        },
        timeout=5,
    )
    node_id = registered.json()["node_id"]
    response = httpx.post(
        f"{fleet.routers[1].api_base}/chat/completions", json=chat_body("ev-nobody"), timeout=10
    )
    assert response.status_code == 502, response.text
    message = error_of(response)["message"]
    assert node_id in message
    assert "127.0.0.1" not in message and str(port) not in message, message


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_a_deeply_nested_body_is_a_400_and_excludes_nothing(fleet: Fleet, depth: int) -> None:
    deep = '{"model": "ev-deep", "messages": [], "x": ' + "[" * depth + "]" * depth + "}"
    for router in fleet.routers:
        response = httpx.post(
            f"{router.api_base}/chat/completions",
            content=deep,
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert response.status_code == 400, response.text
        assert error_of(response)["type"] == "invalid_request_error"
    for machine in (fleet.healthy, fleet.second):
        assert fleet.everywhere_excluded(fleet.ids[machine.machine_name]) == [{}, {}]
    assert ask(fleet.client(max_retries=0), "ev-deep", "still served")


def test_a_request_another_node_calls_bad_is_no_evidence(fleet: Fleet) -> None:
    """The node failed a request that the next node refused as the client's error (4xx):
    the request was the problem, so its failure does not count."""
    healthy = fleet.ids[fleet.healthy.machine_name]
    with hostile_node(fail_500) as fragile:
        fragile.register(fleet.routers[0].url, ["ev-broken"], **PREFERRED)
        for i in range(4):
            response = httpx.post(
                f"{next(fleet.replica).api_base}/chat/completions",
                json=chat_body("ev-broken", max_tokens=-1, user=f"bad-{i}"),
                timeout=10,
            )
            assert response.status_code == 400, response.text
            assert response.headers["x-llm-router-node"] == healthy
        assert fragile.hits["/v1/chat/completions"] == 4
        assert fleet.everywhere_excluded(fragile.node_id) == [{}, {}]
