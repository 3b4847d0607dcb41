"""The agent's forwarder sends the runtime its own key, never the router's credential."""

from __future__ import annotations

from typing import Any

import httpx

import ports
from llm_router.asgi_util import Receive, Scope, Send, read_body, send_json
from llm_router.gpu import GpuBackend, ModelSpec
from llm_router.node.app import RuntimeProxy, create_node_app
from llm_router.node.detect import GpuInfo
from llm_router.node.server import make_server, start_server, stop_server
from llm_router.node.state import Inventory, NodeState


class RecordingRuntime:
    """A runtime that answers every POST with the Authorization header it received."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive, 1 << 20)
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization")
        self.seen.append(auth.decode() if auth else None)
        await send_json(send, 200, {"object": "chat.completion", "choices": []})


def _free_port() -> int:
    return ports.free_port()


async def _through_agent(api_key: str | None) -> tuple[RecordingRuntime, Any]:
    runtime = RecordingRuntime()
    port = _free_port()
    server = make_server(runtime, "127.0.0.1", port, "warning")
    task = await start_server(server)
    state = NodeState(
        GpuInfo(GpuBackend.CPU), Inventory.build(GpuBackend.CPU, [ModelSpec("m")]), "x"
    )
    state.credential.set("router-node-secret")  # as the agent's registration would
    proxy = RuntimeProxy(f"http://127.0.0.1:{port}", state, api_key=api_key)
    api = create_node_app(state, proxy)
    try:
        async with (
            proxy.lifespan(api.app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=api), base_url="http://n"
            ) as client,
        ):
            response = await client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": []},
                headers={"Authorization": "Bearer router-node-secret"},
            )
    finally:
        await stop_server(server, task)
    return runtime, response


async def test_runtime_key_replaces_the_routers_credential() -> None:
    runtime, response = await _through_agent("rt-key")
    assert response.status_code == 200
    assert runtime.seen == ["Bearer rt-key"]


async def test_without_a_runtime_key_no_credential_is_forwarded() -> None:
    runtime, response = await _through_agent(None)
    assert response.status_code == 200
    assert runtime.seen == [None]
