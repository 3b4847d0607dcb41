"""The agent against a fake router that records what it receives.

The fake implements just enough of BRIEF §3 (register, heartbeat, delete) to check the
agent's side of the protocol: bodies, headers, retry, re-registration and deregistration.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import ports
from integration.certs import CertAuthority
from integration.fake_router import FakeRouter
from llm_router.node.server import (
    EmbeddedServer,
    ServerTLS,
    make_server,
    start_server,
    stop_server,
)
from llm_router.node.settings import SimNodeSettings
from llm_router.sim.node import run_sim_node


def free_port(minimum: int = 1) -> int:
    while True:
        port = ports.free_port()
        if port > minimum:
            return port


def free_port_pair() -> int:
    for _ in range(100):
        port = free_port(minimum=1024)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port - 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


@dataclass
class Running:
    router: FakeRouter
    url: str
    server: EmbeddedServer
    task: asyncio.Task[None]


@pytest.fixture
async def router() -> AsyncIterator[Running]:
    fake = FakeRouter()
    port = free_port()
    server = make_server(fake, "127.0.0.1", port)
    task = await start_server(server)
    yield Running(fake, f"http://127.0.0.1:{port}", server, task)
    await stop_server(server, task)


def sim_settings(router_url: str, **overrides: Any) -> SimNodeSettings:
    values: dict[str, Any] = {
        "router_url": router_url,
        "port": free_port_pair(),
        "machine_name": "mac-1",
        "gpu_backend": "metal",
        "models": "llama-gguf,phi-mlx,qwen-awq",
        "max_concurrency": 3,
        "node_key": "secret-node-key",
        "ttft_ms": 0,
        **overrides,
    }
    return SimNodeSettings(**values)


async def test_registration_heartbeat_and_deregistration(router: Running) -> None:
    settings = sim_settings(router.url)
    stop = asyncio.Event()
    agent = asyncio.create_task(run_sim_node(settings, stop=stop))
    fake = router.router
    await fake.wait_for(lambda: len(fake.of("POST", "/v0/health")) >= 2)

    register = fake.of("POST", "/v0/nodes")[0]
    assert register.headers["authorization"] == "Bearer secret-node-key"
    body = register.body
    assert body["machine_name"] == "mac-1"
    assert body["ip_address"] == "127.0.0.1"
    assert body["node_api_port"] == settings.port
    assert body["runtime_port"] == settings.port - 1
    assert body["gpu_backend"] == "metal"
    assert body["gpu_available"] is True
    assert body["gpu_devices"][0]["model"].startswith("Apple")
    assert body["executable_models"] == ["llama-gguf", "phi-mlx"]
    assert body["models"] == ["llama-gguf", "phi-mlx", "qwen-awq"]
    assert body["max_concurrency"] == 3

    beat = fake.of("POST", "/v0/health")[0]
    assert beat.headers["x-node-token"] == "token-1"
    hb = beat.body
    assert hb["node_id"] == "node-1"
    assert hb["executable_models"] == ["llama-gguf", "phi-mlx"]
    assert hb["models"] == ["llama-gguf", "phi-mlx", "qwen-awq"]
    assert hb["gpu_backend"] == "metal"
    assert hb["active_requests"] == 0
    assert hb["max_concurrency"] == 3
    assert hb["initializing"] is False
    assert 0 <= hb["cpu_usage"] <= 100
    assert 0 <= hb["memory_usage"] <= 100
    assert hb["gpu_capability_score"] == 10000

    stop.set()
    assert await asyncio.wait_for(agent, 15) == 0
    deletes = fake.of("DELETE", "/v0/nodes/")
    assert [d.path for d in deletes] == ["/v0/nodes/node-1"]
    assert deletes[0].headers["x-node-token"] == "token-1"


async def test_reregisters_when_the_router_forgets(router: Running) -> None:
    fake = router.router
    stop = asyncio.Event()
    agent = asyncio.create_task(run_sim_node(sim_settings(router.url), stop=stop))
    await fake.wait_for(lambda: len(fake.of("POST", "/v0/health")) >= 1)
    fake.forget_next_heartbeat = True
    await fake.wait_for(lambda: len(fake.of("POST", "/v0/nodes")) >= 2)
    seen = len(fake.of("POST", "/v0/health"))
    await fake.wait_for(lambda: len(fake.of("POST", "/v0/health")) >= seen + 2)
    # Heartbeats after re-registration carry the new token and are accepted.
    assert fake.of("POST", "/v0/health")[-1].headers["x-node-token"] == "token-2"
    stop.set()
    assert await asyncio.wait_for(agent, 15) == 0


async def test_keeps_retrying_until_a_router_answers() -> None:
    port = free_port()
    fake = FakeRouter()
    stop = asyncio.Event()
    agent = asyncio.create_task(run_sim_node(sim_settings(f"http://127.0.0.1:{port}"), stop=stop))
    await asyncio.sleep(1.0)  # a few failed attempts against a closed port
    server = make_server(fake, "127.0.0.1", port)
    task = await start_server(server)
    try:
        await fake.wait_for(lambda: len(fake.of("POST", "/v0/health")) >= 1)
        assert len(fake.of("POST", "/v0/nodes")) == 1
    finally:
        stop.set()
        assert await asyncio.wait_for(agent, 15) == 0
        await stop_server(server, task)


async def test_sigterm_deregisters_then_drains_then_exits_0(router: Running) -> None:
    fake = router.router
    port = free_port_pair()
    env = {
        **os.environ,
        "LLM_ROUTER_ROUTER_URL": router.url,
        "LLM_ROUTER_PORT": str(port),
        "LLM_ROUTER_MACHINE_NAME": "drain-me",
        "LLM_ROUTER_GPU_BACKEND": "cuda",
        "LLM_ROUTER_MODELS": "llama-gguf",
        "LLM_ROUTER_TTFT_MS": "0",
        "LLM_ROUTER_TOKENS_PER_S": "8",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_router.sim", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await fake.wait_for(lambda: len(fake.of("POST", "/v0/health")) >= 1, within_s=60)
        body = {"model": "llama-gguf", "stream": True, "max_tokens": 12}
        lines: list[str] = []
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            auth = {"authorization": "Bearer secret-1"}
            async with client.stream("POST", url, json=body, headers=auth) as response:
                stream = response.aiter_lines()
                lines.append(await anext(stream))
                proc.send_signal(signal.SIGTERM)
                await fake.wait_for(lambda: bool(fake.of("DELETE", "/v0/nodes/")))
                # Out of routing, and the request in flight is still streaming.
                assert proc.returncode is None
                lines.extend([line async for line in stream])
        assert [line for line in lines if line][-1] == "data: [DONE]"
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        delete = fake.of("DELETE", "/v0/nodes/")[0]
        assert delete.path == "/v0/nodes/node-1"
        assert delete.headers["x-node-token"] == "token-1"
        heartbeats_after_delete = fake.calls[fake.calls.index(delete) + 1 :]
        assert not [c for c in heartbeats_after_delete if c.path == "/v0/health"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("trusted", [True, False])
async def test_registers_over_https_with_the_router_ca_file(tmp_path: Path, trusted: bool) -> None:
    ca = CertAuthority.create(tmp_path, "router-ca")
    leaf = ca.issue(tmp_path, "router")
    fake = FakeRouter()
    port = free_port()
    server = make_server(fake, "127.0.0.1", port, tls=ServerTLS(leaf.cert, leaf.key))
    task = await start_server(server)
    settings = sim_settings(
        f"https://127.0.0.1:{port}", router_ca_file=ca.cert if trusted else None
    )
    stop = asyncio.Event()
    agent = asyncio.create_task(run_sim_node(settings, stop=stop))
    try:
        if trusted:
            await fake.wait_for(lambda: len(fake.of("POST", "/v0/health")) >= 1)
            assert fake.of("POST", "/v0/nodes")[0].body["scheme"] == "http"
        else:
            # The system store does not know this CA: not one request gets through.
            await asyncio.sleep(1.5)
            assert fake.calls == []
    finally:
        stop.set()
        assert await asyncio.wait_for(agent, 15) == 0
        await stop_server(server, task)
