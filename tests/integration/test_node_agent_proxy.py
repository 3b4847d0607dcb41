"""The node API in front of the simulated runtime, both on real uvicorn sockets.

The agent runs as ``run_sim_node`` (the real agent code) registered with a fake router
that issues the node secret ``secret-1``; requests here present it as the router would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

import ports
from integration.fake_router import FakeRouter
from llm_router.gpu import GpuBackend, ModelSpec
from llm_router.node.app import MAX_JSON_DEPTH, RuntimeProxy, create_node_app
from llm_router.node.detect import GpuInfo
from llm_router.node.server import make_server, start_server, stop_server
from llm_router.node.settings import SimNodeSettings
from llm_router.node.state import Inventory, NodeState
from llm_router.sim.node import run_sim_node

Start = Callable[..., Awaitable[str]]


free_port_pair = ports.free_port_pair  # P and P-1 both free (the sim runtime takes P-1)


#: What the fake router's first registration answer issues, presented as the router would.
AUTH = {"authorization": "Bearer secret-1"}


@pytest.fixture
async def start_sim() -> AsyncIterator[Start]:
    running: list[tuple[asyncio.Event, asyncio.Task[int]]] = []
    fake = FakeRouter(interval_s=5.0)
    router_port = free_port_pair()
    router_server = make_server(fake, "127.0.0.1", router_port)
    router_task = await start_server(router_server)

    async def start(**overrides: Any) -> str:
        port = free_port_pair()
        values: dict[str, Any] = {
            "router_url": f"http://127.0.0.1:{router_port}",
            "port": port,
            "machine_name": "sim-a",
            "gpu_backend": "cuda",
            "models": "llama-gguf,phi-mlx",
            "ttft_ms": 0,
            "tokens_per_s": 1000,
            **overrides,
        }
        stop = asyncio.Event()
        task = asyncio.create_task(run_sim_node(SimNodeSettings(**values), stop=stop))
        running.append((stop, task))
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(headers=AUTH) as client:
            for _ in range(500):
                if task.done():
                    task.result()
                with contextlib.suppress(httpx.HTTPError):
                    ready = (await client.get(f"{url}/healthz")).json()["runtime_ready"]
                    if ready and fake.of("POST", "/v0/nodes"):
                        return url
                await asyncio.sleep(0.02)
        raise AssertionError("sim node did not come up")

    yield start
    for stop, task in running:
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0
    await stop_server(router_server, router_task)


async def test_models_lists_only_executable(start_sim: Start) -> None:
    url = await start_sim()
    async with httpx.AsyncClient(headers=AUTH) as client:
        data = (await client.get(f"{url}/v1/models")).json()
        one = await client.get(f"{url}/v1/models/llama-gguf")
        other = await client.get(f"{url}/v1/models/phi-mlx")
    assert data["gpu_backend"] == "cuda"
    assert [m["id"] for m in data["data"]] == ["llama-gguf"]
    assert data["data"][0]["object"] == "model"
    assert one.json()["id"] == "llama-gguf"
    assert other.status_code == 404


async def test_non_executable_model_is_404_at_the_node(start_sim: Start) -> None:
    url = await start_sim()
    async with httpx.AsyncClient(headers=AUTH) as client:
        installed = await client.post(f"{url}/v1/chat/completions", json={"model": "phi-mlx"})
        unknown = await client.post(f"{url}/v1/embeddings", json={"model": "nope", "input": "x"})
        no_model = await client.post(f"{url}/v1/completions", json={"prompt": "x"})
    assert installed.status_code == 404
    assert installed.json()["error"]["code"] == "model_not_found"
    assert "not executable" in installed.json()["error"]["message"]
    assert unknown.status_code == 404
    assert no_model.status_code == 400
    assert no_model.json()["error"]["param"] == "model"


@pytest.mark.parametrize("depth", [600, 1_000, 100_000])
async def test_a_deeply_nested_body_is_400_at_the_node(start_sim: Start, depth: int) -> None:
    url = await start_sim()
    deep = '{"model": "llama-gguf", "x": ' + "[" * depth + "]" * depth + "}"
    async with httpx.AsyncClient(timeout=10, headers=AUTH) as client:
        r = await client.post(f"{url}/v1/chat/completions", content=deep)
        assert r.status_code == 400, r.text
        assert f"nested deeper than {MAX_JSON_DEPTH}" in r.json()["error"]["message"]
        # Nesting within the limit is the runtime's to judge, and it takes it.
        ok = "[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2)
        served = await client.post(
            f"{url}/v1/chat/completions", content='{"model": "llama-gguf", "x": ' + ok + "}"
        )
        assert served.status_code == 200, served.text


async def test_proxies_byte_for_byte(start_sim: Start) -> None:
    url = await start_sim()
    body = {"model": "llama-gguf", "max_tokens": 3}
    async with httpx.AsyncClient(headers=AUTH) as client:
        via_node = await client.post(f"{url}/v1/chat/completions", json=body)
        emb = await client.post(f"{url}/v1/embeddings", json={"model": "llama-gguf", "input": "x"})
    assert via_node.status_code == 200
    assert via_node.headers["x-sim-node"] == "sim-a"
    reply = via_node.json()
    assert reply["model"] == "llama-gguf"
    assert "sim-a" in reply["choices"][0]["message"]["content"]
    assert len(emb.json()["data"][0]["embedding"]) == 16


async def test_stream_arrives_before_the_runtime_finishes(start_sim: Start) -> None:
    url = await start_sim(tokens_per_s=10)
    body = {"model": "llama-gguf", "stream": True, "max_tokens": 6}
    async with httpx.AsyncClient(timeout=10, headers=AUTH) as client:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            first = await anext(lines)
            assert first.startswith("data: ")
            # The runtime still has tokens to produce, and the node counts the stream.
            health = (await client.get(f"{url}/healthz")).json()
            assert health["active_requests"] == 1
            rest = [line async for line in lines]
        after = (await client.get(f"{url}/healthz")).json()
    assert [line for line in rest if line][-1] == "data: [DONE]"
    assert after["active_requests"] == 0
    events = [json.loads(x[6:]) for x in [first, *rest] if x.startswith("data: {")]
    assert "sim-a" in "".join(e["choices"][0]["delta"].get("content", "") for e in events)


async def test_runtime_500_passes_through(start_sim: Start) -> None:
    url = await start_sim(fail_mode="500")
    async with httpx.AsyncClient(headers=AUTH) as client:
        r = await client.post(f"{url}/v1/chat/completions", json={"model": "llama-gguf"})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "sim_failure"


async def test_runtime_drop_drops_the_client_connection(start_sim: Start) -> None:
    url = await start_sim(fail_mode="drop", fail_after_n=1)
    async with httpx.AsyncClient(headers=AUTH) as client:
        ok = await client.post(f"{url}/v1/chat/completions", json={"model": "llama-gguf"})
        assert ok.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(f"{url}/v1/chat/completions", json={"model": "llama-gguf"})
        assert (await client.get(f"{url}/healthz")).json()["active_requests"] == 0


async def test_runtime_dying_mid_stream_cuts_the_stream(start_sim: Start) -> None:
    url = await start_sim(fail_mode="midstream")
    body = {"model": "llama-gguf", "stream": True, "max_tokens": 8}
    received: list[str] = []
    async with httpx.AsyncClient(headers=AUTH) as client:
        with pytest.raises(httpx.HTTPError):
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    received.append(line)
        assert (await client.get(f"{url}/healthz")).json()["active_requests"] == 0
    assert any(line.startswith("data: {") for line in received)
    assert "data: [DONE]" not in received


async def test_runtime_unreachable_is_502() -> None:
    state = NodeState(
        GpuInfo(GpuBackend.CPU), Inventory.build(GpuBackend.CPU, [ModelSpec("m")]), "x"
    )
    state.credential.set("secret-1")
    proxy = RuntimeProxy("http://127.0.0.1:9", state)
    api = create_node_app(state, proxy)
    transport = httpx.ASGITransport(app=api)
    async with (
        proxy.lifespan(api.app),
        httpx.AsyncClient(transport=transport, base_url="http://n", headers=AUTH) as client,
    ):
        r = await client.post("/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "runtime_unreachable"
    assert state.active_requests == 0
