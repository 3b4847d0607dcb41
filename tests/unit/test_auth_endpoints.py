"""Every endpoint of the router against every kind of credential, on the real app.

The app runs on the embedded store with a key per scope configured, so each scope is
closed; the expectations table is the router's access policy in one place.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from llm_router.app import create_app
from llm_router.auth import Scope
from llm_router.security.managed_keys import ManagedKeyStore
from llm_router.settings import RouterSettings
from llm_router.state.connect import Store, open_store
from llm_router.state.keys import Keys

KEYS = {"api": "key-api", "node": "key-node", "admin": "key-admin"}
CREDENTIALS: dict[str, dict[str, str]] = {
    "none": {},
    "bad": {"authorization": "Bearer not-a-key"},
    "api": {"authorization": f"Bearer {KEYS['api']}"},
    "node": {"x-api-key": KEYS["node"]},
    "admin": {"authorization": f"Bearer {KEYS['admin']}"},
}
CHAT = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}


def node_body(name: str, port: int = 9000) -> dict[str, Any]:
    return {
        "machine_name": name,
        "ip_address": "127.0.0.1",
        "runtime_port": port,
        "gpu_backend": "cuda",
        "executable_models": ["m"],
    }


# (method, path, json body, scope needed; None = open to anyone)
ENDPOINTS: list[tuple[str, str, Any, str | None]] = [
    ("POST", "/v1/chat/completions", CHAT, "api"),
    ("POST", "/v1/completions", {"model": "no-such-model", "prompt": "x"}, "api"),
    ("POST", "/v1/embeddings", {"model": "no-such-model", "input": "x"}, "api"),
    ("GET", "/v1/models", None, "api"),
    ("GET", "/v1/models/some/model", None, "api"),
    ("POST", "/v0/nodes", node_body("auth-probe"), "node"),
    ("GET", "/v0/nodes", None, "admin"),
    ("GET", "/v0/nodes/n-1", None, "admin"),
    ("DELETE", "/v0/nodes/n-1", None, "admin"),
    ("POST", "/v0/nodes/n-1/drain", None, "admin"),
    ("POST", "/v0/nodes/n-1/undrain", None, "admin"),
    ("GET", "/dashboard/api/state", None, "admin"),
    ("GET", "/healthz", None, None),
    ("GET", "/readyz", None, None),
    ("GET", "/metrics", None, None),
]


def expected(scope: str | None, credential: str) -> int | None:
    """401/403 when refused, None when authentication lets the request through."""
    if scope is None or credential == "admin" or credential == scope:
        return None
    if credential in ("none", "bad"):
        return 401
    return 403


def assert_openai_error(body: dict[str, Any], code: str | None = None) -> None:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body


@pytest.fixture
def store() -> Store:
    return open_store(None)


def make_app(store: Store, **values: Any) -> Litestar:
    settings = RouterSettings(
        api_keys=[KEYS["api"]],
        node_keys=[KEYS["node"]],
        admin_keys=[KEYS["admin"]],
        **values,
    )
    return create_app(settings, store=store)


@pytest.fixture
async def client(store: Store) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(make_app(store)) as client:
        yield client


@pytest.mark.parametrize(("method", "path", "body", "scope"), ENDPOINTS)
async def test_access_policy(
    client: AsyncTestClient[Any], method: str, path: str, body: Any, scope: str | None
) -> None:
    for credential, headers in CREDENTIALS.items():
        response = await client.request(method, path, json=body, headers=headers)
        want = expected(scope, credential)
        seen = f"{credential}: {response.status_code} {response.text}"
        if want is None:
            assert response.status_code not in (401, 403), seen
            assert response.status_code < 500, seen
        else:
            assert response.status_code == want, seen
            code = "invalid_api_key" if want == 401 else "permission_denied"
            assert_openai_error(response.json(), code)


async def register(client: AsyncTestClient[Any], name: str, port: int = 9000) -> dict[str, Any]:
    response = await client.post(
        "/v0/nodes", json=node_body(name, port), headers=CREDENTIALS["node"]
    )
    assert response.status_code in (200, 201), response.text
    registered: dict[str, Any] = response.json()
    return registered


def beat(node_id: str) -> dict[str, Any]:
    return {"node_id": node_id, "cpu_usage": 1.0, "memory_usage": 1.0, "active_requests": 0}


async def test_a_node_cannot_heartbeat_as_another(client: AsyncTestClient[Any]) -> None:
    a, b = await register(client, "node-a"), await register(client, "node-b")
    as_b = {"x-node-token": b["node_token"]}
    response = await client.post("/v0/health", json=beat(a["node_id"]), headers=as_b)
    assert response.status_code == 401
    assert_openai_error(response.json(), "invalid_api_key")
    ok = await client.post("/v0/health", json=beat(b["node_id"]), headers=as_b)
    assert ok.status_code == 200


async def test_a_heartbeat_needs_the_node_token_not_a_key(client: AsyncTestClient[Any]) -> None:
    a = await register(client, "node-a")
    for headers in (CREDENTIALS["node"], CREDENTIALS["admin"], {"x-node-token": "nt_forged"}):
        response = await client.post("/v0/health", json=beat(a["node_id"]), headers=headers)
        assert response.status_code == 401, (headers, response.text)


async def test_a_node_cannot_remove_another(client: AsyncTestClient[Any]) -> None:
    a, b = await register(client, "node-a"), await register(client, "node-b")
    response = await client.delete(
        f"/v0/nodes/{a['node_id']}", headers={"x-node-token": b["node_token"]}
    )
    assert response.status_code == 403
    assert_openai_error(response.json(), "permission_denied")
    listed = await client.get("/v0/nodes", headers=CREDENTIALS["admin"])
    assert {n["id"] for n in listed.json()} == {a["node_id"], b["node_id"]}
    own = await client.delete(
        f"/v0/nodes/{a['node_id']}", headers={"x-node-token": a["node_token"]}
    )
    assert own.status_code == 200


async def test_a_replaced_token_stops_working(client: AsyncTestClient[Any]) -> None:
    first = await register(client, "node-a")
    second = await register(client, "node-a")
    assert second["node_id"] == first["node_id"] and second["node_token"] != first["node_token"]
    stale = {"x-node-token": first["node_token"]}
    assert (
        await client.post("/v0/health", json=beat(first["node_id"]), headers=stale)
    ).status_code == 401
    gone = await client.delete(f"/v0/nodes/{first['node_id']}", headers=stale)
    assert gone.status_code == 403


async def test_a_node_token_is_not_an_api_key(client: AsyncTestClient[Any]) -> None:
    a = await register(client, "node-a")
    for path in ("/v0/nodes", "/v1/models"):
        response = await client.get(path, headers={"authorization": f"Bearer {a['node_token']}"})
        assert response.status_code == 401


async def test_managed_keys_work_through_the_app_and_revocation_applies(
    store: Store,
) -> None:
    app = make_app(store)
    async with AsyncTestClient(app) as client:
        managed = ManagedKeyStore(store.redis, Keys(app.state.fleet.settings.key_prefix))
        key, listing = await managed.create(Scope.ADMIN, name="ops")
        headers = {"authorization": f"Bearer {key}"}
        assert (await client.get("/v0/nodes", headers=headers)).status_code == 401
        await app.state.guard.refresher.refresh()
        assert (await client.get("/v0/nodes", headers=headers)).status_code == 200
        await managed.revoke(listing.key_id)
        await app.state.guard.refresher.refresh()
        assert (await client.get("/v0/nodes", headers=headers)).status_code == 401


async def test_rate_limited_keys_get_429_in_openai_shape(store: Store) -> None:
    async with AsyncTestClient(make_app(store, rate_limit_per_minute=2)) as client:
        statuses = []
        for _ in range(3):
            response = await client.post(
                "/v1/chat/completions", json=CHAT, headers=CREDENTIALS["api"]
            )
            statuses.append(response.status_code)
        assert statuses == [404, 404, 429]
        assert_openai_error(response.json(), "rate_limit_exceeded")
        assert 1 <= int(response.headers["retry-after"]) <= 60
        # The admin key has its own budget.
        other = await client.post("/v1/chat/completions", json=CHAT, headers=CREDENTIALS["admin"])
        assert other.status_code == 404


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v0/nodes"])
async def test_a_body_over_the_limit_is_413_in_openai_shape(store: Store, path: str) -> None:
    async with AsyncTestClient(make_app(store, max_body_bytes=4096)) as client:
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 8000}]}
        headers = CREDENTIALS["admin"]
        response = await client.post(path, json=big, headers=headers)
        assert response.status_code == 413, response.text
        assert_openai_error(response.json(), "request_too_large")
        small = await client.post(path, json={"model": "m"}, headers=headers)
        assert small.status_code != 413


@pytest.mark.parametrize(
    ("model", "param"),
    [("", "model"), ("x" * 257, "model"), ("bad\nid", "model"), (7, "model"), (None, "model")],
)
async def test_model_ids_are_validated(
    client: AsyncTestClient[Any], model: Any, param: str
) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"model": model, "messages": []}, headers=CREDENTIALS["api"]
    )
    assert response.status_code == 400, response.text
    assert_openai_error(response.json(), "invalid_request")
    assert response.json()["error"]["param"] == param


async def test_readyz_warns_when_authentication_is_disabled(store: Store) -> None:
    settings = RouterSettings(auth_disabled=True)
    async with AsyncTestClient(create_app(settings, store=store)) as client:
        body = (await client.get("/readyz")).json()
        assert "authentication is disabled" in body["warning"]
    async with AsyncTestClient(make_app(open_store(None))) as client:
        assert "warning" not in (await client.get("/readyz")).json()


async def test_readyz_warns_while_managed_keys_are_stale() -> None:
    app = make_app(open_store(None))
    async with AsyncTestClient(app) as client:
        assert "warning" not in (await client.get("/readyz")).json()
        # As if every refresh since start-up had failed: the replica stays ready (routing
        # works) but says revocations are not reaching it.
        app.state.guard.refresher._loaded_at = time.monotonic() - 3600
        body = (await client.get("/readyz")).json()
        assert body["status"] == "ready"
        assert "managed keys not refreshed for 3600 s" in body["warning"]
