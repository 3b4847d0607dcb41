"""What the router itself answers on every proxied endpoint, in that endpoint's dialect:
the real app on the embedded store, with an API key configured and no node at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from llm_router.app import create_app
from llm_router.routing.endpoints import ENDPOINTS, Dialect, Endpoint, ModelFrom
from llm_router.settings import RouterSettings
from llm_router.state.connect import open_store

KEY = "key-api"
BEARER = {"authorization": f"Bearer {KEY}"}
BIG = b'{"model": "m", "pad": "' + b"x" * 5000 + b'"}'  # over the app's 4096-byte limit


@pytest.fixture
async def client() -> AsyncIterator[AsyncTestClient[Any]]:
    settings = RouterSettings(
        api_keys=[KEY], node_keys=["n"], admin_keys=["a"], max_body_bytes=4096
    )
    async with AsyncTestClient(create_app(settings, store=open_store(None))) as made:
        yield made


def assert_dialect(payload: dict[str, Any], dialect: Dialect, kind: str) -> str:
    """Check the shape; return the error's message."""
    if dialect is Dialect.ANTHROPIC:
        assert payload == {
            "type": "error",
            "error": {"type": kind, "message": payload["error"]["message"]},
        }
    else:
        assert set(payload) == {"error"} and set(payload["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
        assert payload["error"]["type"] == kind or payload["error"]["code"] == kind, payload
    message: str = payload["error"]["message"]
    assert message
    return message


def url(e: Endpoint) -> str:
    return e.path.replace("{response_id}", "resp_abc")


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
async def test_every_endpoint_answers_401_and_404_in_its_dialect(
    client: AsyncTestClient[Any], endpoint: Endpoint
) -> None:
    body = {"model": "no/such-model", "input": "x"}
    denied = await client.request(endpoint.method, url(endpoint), json=body)
    assert denied.status_code == 401
    assert_dialect(denied.json(), endpoint.dialect, "authentication_error")
    # x-api-key authenticates like a Bearer; then the model (or stored response) is unknown.
    headers = {"x-api-key": KEY}
    if endpoint.model_from is ModelFrom.FORM:
        answer = await client.post(
            url(endpoint), data={"model": "no/such-model"}, files={"file": ("a.wav", b"RIFF")},
            headers=headers,
        )  # fmt: skip
    else:
        answer = await client.request(endpoint.method, url(endpoint), json=body, headers=headers)
    assert answer.status_code == 404, answer.text
    kind = "not_found_error" if endpoint.dialect is Dialect.ANTHROPIC else "invalid_request_error"
    message = assert_dialect(answer.json(), endpoint.dialect, kind)
    assert (
        "resp_abc" if endpoint.model_from is ModelFrom.RESPONSE_ID else "no/such-model"
    ) in message


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind"),
    [
        ("POST", "/v1/messages", b'{"max_tokens": 1}', 400, "invalid_request_error"),
        ("POST", "/v1/messages", b"not json", 400, "invalid_request_error"),
        ("POST", "/v1/messages", BIG, 413, "request_too_large"),
        ("GET", "/v1/messages", b"", 405, "invalid_request_error"),
        ("POST", "/v1/messages/batches", b"{}", 404, "not_found_error"),
        ("POST", "/v1/chat/completions", b'{"max_tokens": 1}', 400, "invalid_request_error"),
        ("GET", "/v1/chat/completions", b"", 405, "method_not_allowed"),
        ("POST", "/v1/audio/transcriptions", b"model=m", 415, "unsupported_media_type"),
    ],
)  # fmt: skip
async def test_router_answers_in_the_endpoint_dialect(
    client: AsyncTestClient[Any], method: str, path: str, body: bytes, status: int, kind: str
) -> None:
    headers = {
        **BEARER,
        "content-type": "application/x-www-form-urlencoded"
        if b"=" in body[:8]
        else "application/json",
    }
    response = await client.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    dialect = Dialect.ANTHROPIC if path.startswith("/v1/messages") else Dialect.OPENAI
    assert_dialect(response.json(), dialect, kind)


async def test_ambiguous_credentials_are_refused_in_the_dialect(
    client: AsyncTestClient[Any],
) -> None:
    headers = {**BEARER, "x-api-key": "another-key"}
    body = {"model": "m", "max_tokens": 1, "messages": []}
    anthropic = await client.post("/v1/messages", json=body, headers=headers)
    assert anthropic.status_code == 400
    assert_dialect(anthropic.json(), Dialect.ANTHROPIC, "invalid_request_error")
    openai = await client.post("/v1/responses", json=body, headers=headers)
    assert openai.status_code == 400
    assert_dialect(openai.json(), Dialect.OPENAI, "invalid_request_error")


async def test_openapi_documents_every_proxied_endpoint(client: AsyncTestClient[Any]) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    for e in ENDPOINTS:
        operation = paths[e.path][e.method.lower()]
        assert operation["operationId"] == e.name
        if e.model_from is ModelFrom.FORM:
            assert "multipart/form-data" in operation["requestBody"]["content"]
        elif e.model_from is ModelFrom.JSON:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema["required"] == ["model"]
        else:
            assert operation["parameters"][0]["name"] == "response_id"


async def test_proxied_paths_skip_litestar_routing_with_the_same_answers(
    client: AsyncTestClient[Any],
) -> None:
    """The hot path is served in front of Litestar's router; the answers are the ones
    Litestar gives on the same paths (a trailing slash still goes through Litestar)."""
    app = client.app
    routed: list[str] = []
    original = app.asgi_router.handle_routing

    def counting(path: str, method: Any) -> Any:
        routed.append(path)
        return original(path=path, method=method)

    app.asgi_router.handle_routing = counting  # type: ignore[method-assign]
    body = {"model": "no/such-model", "messages": []}
    for path in ("/v1/chat/completions", "/v1/messages"):
        front = await client.post(path, json=body, headers=BEARER)
        via_litestar = await client.post(path + "/", json=body, headers=BEARER)
        assert front.status_code == via_litestar.status_code == 404
        assert front.json() == via_litestar.json()
        assert front.headers["content-type"] == via_litestar.headers["content-type"]
    assert routed == ["/v1/chat/completions", "/v1/messages"]  # the trailing-slash ones
    assert (await client.get("/healthz")).status_code == 200
    assert routed[-1] == "/healthz"


async def test_a_bad_host_header_is_refused_on_the_proxied_paths(
    client: AsyncTestClient[Any],
) -> None:
    answer = await client.post(
        "/v1/chat/completions", json={"model": "m"}, headers={**BEARER, "host": "a b"}
    )
    assert answer.status_code == 400
    assert assert_dialect(answer.json(), Dialect.OPENAI, "invalid_request_error") == (
        "Invalid host header"
    )
