"""Model-aware routing through real processes: two router replicas on one redis-server,
simulated Metal, CUDA and CPU nodes, the official ``openai`` SDK as the client.

The fleet (one per module):

    metal-a  metal  MLX model, shared GGUF model
    metal-b  metal  MLX model, shared GGUF model
    cuda-c   cuda   shared GGUF model, an FP8 model, the MLX model and two more MLX models
                    installed (none executable on CUDA)
    lonely   cpu    a model no other node has; killed by the offline test (last in file)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest

from integration.conftest import open_cluster
from integration.probes import SdkClients, chat_body, error_of, retry_after
from integration.procs import Cluster, Router, SimNode

MLX = "mlx-community/Llama-3.2-1B-Instruct-4bit-mlx"
MLX_NOWHERE = "mlx-community/Qwen2.5-0.5B-Instruct-mlx"
SHARED = "bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"
FP8 = "neuralmagic/Meta-Llama-3-8B-Instruct-FP8"
LATE = "mlx-community/Phi-3-mini-4k-instruct-4bit-mlx"
LONELY = "lonely-model"

pytestmark = pytest.mark.redis


class Fleet:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.r1, self.r2 = cluster.start_router(), cluster.start_router()
        slow: dict[str, Any] = {"ttft_ms": 250, "max_concurrency": 4}
        self.metal_a = cluster.start_node(
            [MLX, SHARED], backend="metal", machine_name="metal-a", **slow
        )
        self.metal_b = cluster.start_node(
            [MLX, SHARED], backend="metal", machine_name="metal-b", **slow
        )
        self.cuda_c = cluster.start_node(
            [SHARED, FP8, MLX, MLX_NOWHERE, LATE],
            backend="cuda",
            machine_name="cuda-c",
            router=self.r2,
            **slow,
        )
        self.lonely = cluster.start_node([LONELY], backend="cpu", machine_name="lonely")
        self.ids = cluster.wait_all()

    @property
    def nodes(self) -> list[SimNode]:
        return [self.metal_a, self.metal_b, self.cuda_c, self.lonely]

    def id_of(self, node: SimNode) -> str:
        return self.ids[node.machine_name]


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with open_cluster(redis_url) as cluster:
        yield Fleet(cluster)


async def test_routes_to_the_only_capable_node(fleet: Fleet, sdk: SdkClients) -> None:
    # The Metal nodes score higher, but only the CUDA node can run an FP8 model.
    for router in (fleet.r1, fleet.r2):
        raw = await sdk(router).chat.completions.with_raw_response.create(
            model=FP8, messages=[{"role": "user", "content": "hi"}]
        )
        completion = raw.parse()
        assert raw.headers["x-llm-router-node"] == fleet.id_of(fleet.cuda_c)
        assert raw.headers["x-request-id"]
        assert completion.model == FP8
        assert completion.choices[0].message.content is not None
        assert completion.choices[0].message.content.startswith(f"Hello from cuda-c serving {FP8}")


async def test_request_id_is_kept_and_other_endpoints_route(fleet: Fleet, sdk: SdkClients) -> None:
    client = sdk(fleet.r1)
    raw = await client.embeddings.with_raw_response.create(
        model=LONELY, input="hello", extra_headers={"x-request-id": "trace-123"}
    )
    assert raw.headers["x-request-id"] == "trace-123"
    assert raw.headers["x-llm-router-node"] == fleet.id_of(fleet.lonely)
    assert len(raw.parse().data[0].embedding) > 0
    completion = await client.completions.create(model=LONELY, prompt="hi", max_tokens=3)
    assert completion.choices[0].text.startswith(f"Hello from lonely serving {LONELY}")


async def test_metal_only_model_never_lands_on_cuda(fleet: Fleet, sdk: SdkClients) -> None:
    # The CUDA node has the MLX model installed and is idle; 8 slots on the Metal nodes
    # for 20 concurrent requests means most of them wait, yet none may go to CUDA.
    metal = {fleet.id_of(fleet.metal_a), fleet.id_of(fleet.metal_b)}
    clients = [sdk(fleet.r1), sdk(fleet.r2)]

    async def one(i: int) -> tuple[str, str]:
        raw = await clients[i % 2].chat.completions.with_raw_response.create(
            model=MLX, messages=[{"role": "user", "content": "hi"}]
        )
        return raw.headers["x-llm-router-node"], raw.parse().choices[0].message.content or ""

    results = await asyncio.gather(*(one(i) for i in range(20)))
    served_by = Counter(node for node, _ in results)
    assert set(served_by) == metal, served_by
    for _, text in results:
        assert text.startswith(("Hello from metal-a serving", "Hello from metal-b serving"))


async def test_concurrent_load_spreads_over_capable_nodes(fleet: Fleet, sdk: SdkClients) -> None:
    # Three idle nodes with 4 slots each, six requests at once, each held 250 ms: the least
    # loaded pick puts two on each node. Six different conversations: identical prompts
    # would share a pin (affinity keeps them together within its margin).
    client = sdk(fleet.r1)

    async def one(i: int) -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model=SHARED, messages=[{"role": "user", "content": f"hi {i}"}]
        )
        return raw.headers["x-llm-router-node"]

    served_by = Counter(await asyncio.gather(*(one(i) for i in range(6))))
    expected = {fleet.id_of(n) for n in (fleet.metal_a, fleet.metal_b, fleet.cuda_c)}
    assert set(served_by) == expected, served_by
    assert sorted(served_by.values()) == [2, 2, 2], served_by


async def test_unknown_model_is_404_model_not_found(fleet: Fleet, sdk: SdkClients) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk(fleet.r1).chat.completions.create(
            model="no-such/model-anywhere", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


async def test_installed_but_executable_nowhere_is_503_with_retry_after(
    fleet: Fleet, sdk: SdkClients
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk(fleet.r2).chat.completions.create(
            model=MLX_NOWHERE, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 503
    assert caught.value.code == "no_capable_nodes"
    retry_after(caught.value.response.headers)


def _models(router: Router) -> list[dict[str, object]]:
    response = httpx.get(f"{router.api_base}/models", timeout=5)
    assert response.status_code == 200
    payload = response.json()
    assert payload["object"] == "list"
    data: list[dict[str, object]] = payload["data"]
    return data


async def test_models_is_the_union_and_identical_on_every_replica(
    fleet: Fleet, sdk: SdkClients
) -> None:
    on_r1, on_r2 = (
        await asyncio.to_thread(_models, fleet.r1),
        await asyncio.to_thread(_models, fleet.r2),
    )
    assert on_r1 == on_r2
    assert {m["id"] for m in on_r1} == {MLX, SHARED, FP8, LONELY}
    for entry in on_r1:
        assert entry["object"] == "model"
        assert isinstance(entry["created"], int)
        assert isinstance(entry["owned_by"], str)
    listed = await sdk(fleet.r2).models.list()
    assert sorted(m.id for m in listed.data) == sorted(str(m["id"]) for m in on_r1)


def test_created_is_stable_for_a_model_first_seen_installed_only(fleet: Fleet) -> None:
    # cuda-c has had LATE installed (not executable) since the fleet started; now a Metal
    # node that can run it joins.
    late = fleet.cluster.start_node([LATE], backend="metal", machine_name="metal-late")
    try:
        fleet.cluster.wait_online(late)
        first = {m["id"]: m for m in _models(fleet.r1)}
        time.sleep(1.1)
        second = {m["id"]: m for m in _models(fleet.r2)}
        assert LATE in first and LATE in second
        assert first[LATE]["created"] == second[LATE]["created"]
    finally:
        late.proc.kill()


@pytest.mark.parametrize("model", [MLX, SHARED])
def test_model_lookup_with_slash_and_encoded_slash(fleet: Fleet, model: str) -> None:
    for path in (model, quote(model, safe=":"), quote(model, safe="")):
        response = httpx.get(f"{fleet.r1.api_base}/models/{path}", timeout=5)
        assert response.status_code == 200, (path, response.text)
        assert response.json()["id"] == model
        assert response.json()["object"] == "model"


async def test_model_lookup_through_the_sdk(fleet: Fleet, sdk: SdkClients) -> None:
    model = await sdk(fleet.r2).models.retrieve(MLX)
    assert model.id == MLX


@pytest.mark.parametrize("model", [MLX_NOWHERE, "no-such/model"])
def test_model_lookup_of_an_unlisted_model_is_404(fleet: Fleet, model: str) -> None:
    # Not listed, even though chat answers 503 (not 404) for the installed one.
    response = httpx.get(f"{fleet.r1.api_base}/models/{model}", timeout=5)
    assert response.status_code == 404
    assert error_of(response)["type"] == "invalid_request_error"


# Kills a node: keep it last in the module.
def test_model_of_an_offline_node_is_503_then_leaves_the_list(fleet: Fleet) -> None:
    client = openai.OpenAI(base_url=fleet.r1.api_base, api_key="x", max_retries=0)
    client.chat.completions.create(model=LONELY, messages=[{"role": "user", "content": "hi"}])
    fleet.lonely.proc.kill()
    killed = time.monotonic()
    fleet.cluster.wait_status(fleet.lonely, "offline", timeout_s=5)
    # Within the node timeout (1.5 s) plus a heartbeat, it is gone.
    assert time.monotonic() - killed < 3.5
    for router in (fleet.r1, fleet.r2):
        response = httpx.post(
            f"{router.api_base}/chat/completions", json=chat_body(LONELY), timeout=5
        )
        assert response.status_code == 503, response.text
        error = error_of(response)
        assert error["code"] == "no_capable_nodes"
        assert error["param"] == "model"
        retry_after(response.headers)
        assert LONELY not in {m["id"] for m in _models(router)}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=LONELY, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
