"""The node protocol's HTTP surface rejects bad input with a clear 4xx and writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from llm_router.app import create_app
from llm_router.settings import RouterSettings
from llm_router.state.connect import Store, open_store

GOOD = {
    "machine_name": "mac-1",
    "ip_address": "127.0.0.1",
    "runtime_port": 9000,
    "gpu_backend": "metal",
    "executable_models": ["m-gguf"],
}


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = open_store(None)
    yield store


@pytest.fixture
async def client(store: Store) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(RouterSettings(), store=store)
    async with AsyncTestClient(app) as client:
        yield client


async def _keys(store: Store) -> list[bytes]:
    return sorted(await store.redis.keys("*"))


def _assert_openai_error(body: dict[str, Any], param: str | None = None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
        assert param.split(".")[0] in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**GOOD, "runtime_port": "nine"}, "runtime_port"),
        ({**GOOD, "runtime_port": 70000}, "runtime_port"),
        ({**GOOD, "ip_address": "not-an-ip"}, "ip_address"),
        ({**GOOD, "gpu_backend": "vulkan"}, "gpu_backend"),
        ({**GOOD, "executable_models": ["x" * 10_000]}, "executable_models.0"),
        ({**GOOD, "executable_models": ["bad\x00id"]}, "executable_models.0"),
        ({**GOOD, "machine_name": "evil\x1b[31m"}, "machine_name"),
        ({**GOOD, "max_concurrency": 0}, "max_concurrency"),
        ({k: v for k, v in GOOD.items() if k != "machine_name"}, "machine_name"),
        ({**GOOD, "executable_models": "m-gguf"}, "executable_models"),
        ({**GOOD, "scheme": "ftp"}, "scheme"),
    ],
)
async def test_register_rejects_bad_fields_naming_them(
    client: AsyncTestClient[Any], store: Store, body: dict[str, Any], param: str
) -> None:
    before = await _keys(store)
    resp = await client.post("/v0/nodes", json=body)
    assert resp.status_code == 400, resp.text
    _assert_openai_error(resp.json(), param)
    assert await _keys(store) == before


@pytest.mark.parametrize("raw", [b"{bad", b"[1, 2]", b"", b"\xff\xfe", b"null"])
async def test_register_rejects_malformed_bodies(
    client: AsyncTestClient[Any], store: Store, raw: bytes
) -> None:
    resp = await client.post("/v0/nodes", content=raw)
    assert resp.status_code == 400
    _assert_openai_error(resp.json())
    assert await _keys(store) == []


async def test_gpu_backend_error_lists_the_allowed_values(client: AsyncTestClient[Any]) -> None:
    resp = await client.post("/v0/nodes", json={**GOOD, "gpu_backend": "vulkan"})
    message = resp.json()["error"]["message"]
    for allowed in ("metal", "cuda", "rocm", "directml", "cpu"):
        assert allowed in message


async def test_heartbeat_needs_its_own_nodes_token(
    client: AsyncTestClient[Any], store: Store
) -> None:
    first = (await client.post("/v0/nodes", json=GOOD)).json()
    other = (await client.post("/v0/nodes", json={**GOOD, "machine_name": "mac-2"})).json()
    beat = {"node_id": first["node_id"], "executable_models": ["m-gguf", "other"]}
    before = await _keys(store)

    missing = await client.post("/v0/health", json=beat)
    assert missing.status_code == 401
    _assert_openai_error(missing.json())

    stolen = await client.post(
        "/v0/health", json=beat, headers={"X-Node-Token": other["node_token"]}
    )
    assert stolen.status_code == 401
    _assert_openai_error(stolen.json())
    assert await _keys(store) == before

    unknown = await client.post(
        "/v0/health",
        json={"node_id": "nope", "executable_models": []},
        headers={"X-Node-Token": first["node_token"]},
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "node_not_found"

    ok = await client.post("/v0/health", json=beat, headers={"X-Node-Token": first["node_token"]})
    assert ok.status_code == 200
    node = (await client.get(f"/v0/nodes/{first['node_id']}")).json()
    assert node["executable_models"] == ["m-gguf", "other"]


async def test_heartbeat_bad_types_are_400(client: AsyncTestClient[Any]) -> None:
    reg = (await client.post("/v0/nodes", json=GOOD)).json()
    resp = await client.post(
        "/v0/health",
        json={"node_id": reg["node_id"], "cpu_usage": "lots"},
        headers={"X-Node-Token": reg["node_token"]},
    )
    assert resp.status_code == 400
    _assert_openai_error(resp.json(), "cpu_usage")


async def test_registration_then_reregistration(client: AsyncTestClient[Any]) -> None:
    first = await client.post("/v0/nodes", json=GOOD)
    assert first.status_code == 201
    assert first.json()["status"] == "registered"
    assert first.json()["node_api_port"] == 9001
    again = await client.post("/v0/nodes", json=GOOD)
    assert again.status_code == 200
    assert again.json()["status"] == "updated"
    assert again.json()["node_id"] == first.json()["node_id"]
    assert again.json()["node_token"] != first.json()["node_token"]
    # The secret the router presents to the node rotates with every registration too.
    assert first.json()["node_secret"].startswith("ns_")
    assert again.json()["node_secret"] != first.json()["node_secret"]
    old = await client.post(
        "/v0/health",
        json={"node_id": first.json()["node_id"]},
        headers={"X-Node-Token": first.json()["node_token"]},
    )
    assert old.status_code == 401


async def test_unreachable_node_models_is_502_naming_the_url(client: AsyncTestClient[Any]) -> None:
    body = {k: v for k, v in GOOD.items() if k != "executable_models"}
    body["runtime_port"] = 1  # node API on port 2: nothing listens there
    resp = await client.post("/v0/nodes", json=body)
    assert resp.status_code == 502
    assert "http://127.0.0.1:2/v1/models" in resp.json()["error"]["message"]


async def test_unknown_routes_and_models_answer_in_openai_shape(
    client: AsyncTestClient[Any],
) -> None:
    resp = await client.get("/v0/nope")
    assert resp.status_code == 404
    _assert_openai_error(resp.json())
    resp = await client.post("/v1/chat/completions", json={"model": "never-seen"})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"
    resp = await client.get("/v1/models/org%2Fnever-seen")
    assert resp.status_code == 404
