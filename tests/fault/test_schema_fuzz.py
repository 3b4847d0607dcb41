"""Fuzzing the router's HTTP surface: Schemathesis from its own OpenAPI schema, and
Hypothesis-generated JSON and bytes at the bodies the schema does not describe.

Whatever comes in, the router answers below 500 and every error is in the OpenAI shape.
The router runs as a real process on a real Redis, with a simulated node serving a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integration.procs import Cluster, Router

MODEL = "fuzz-model"


@pytest.fixture(scope="module")
def router(redis_url: str) -> Iterator[Router]:
    cluster = Cluster(redis_url)
    try:
        [started] = cluster.up(1)
        cluster.wait_online(cluster.start_node([MODEL], backend="cuda"))
        yield started
    finally:
        print(cluster.logs())
        cluster.close()


@pytest.fixture(scope="module")
def api_schema(router: Router) -> Any:
    return schemathesis.openapi.from_url(f"{router.url}/schema/openapi.json")


def assert_sane(response: Any) -> None:
    status = response.status_code
    assert status < 500 or status in (502, 503, 504), (status, response.text)
    if status in (502, 503, 504):
        # A gateway error is allowed (the fuzzer may drain or delete the node), a crash is not.
        assert response.json()["error"]["code"] != "internal_error"
    if status >= 400:
        payload = response.json()
        assert set(payload) == {"error"}, payload
        assert {"message", "type", "param", "code"} <= set(payload["error"]), payload
        assert "Traceback" not in response.text


def test_every_documented_operation(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            assert_sane(case.call(timeout=30))

        call()


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
OPENAI_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]


def openai_bodies() -> st.SearchStrategy[dict[str, Any]]:
    model = st.sampled_from([MODEL, "absent"]) | st.text(max_size=300) | JSON
    return st.fixed_dictionaries(
        {"model": model},
        optional={
            "messages": JSON,
            "stream": st.booleans() | JSON,
            "max_tokens": st.integers(-5, 64) | JSON,
            "prompt": JSON,
            "input": JSON,
        },
    )


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(OPENAI_PATHS), body=openai_bodies() | JSON)
def test_openai_endpoints_take_any_json(router: Router, path: str, body: Any) -> None:
    response = httpx.post(f"{router.url}{path}", content=json.dumps(body), timeout=30)
    assert_sane(response)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from([*OPENAI_PATHS, "/v0/nodes", "/v0/health"]),
    raw=st.binary(max_size=200),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/x-www"]),
)
def test_endpoints_take_any_bytes(router: Router, path: str, raw: bytes, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(f"{router.url}{path}", content=raw, headers=headers, timeout=30)
    assert_sane(response)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.dictionaries(
        st.sampled_from(
            ["machine_name", "runtime_port", "node_api_port", "gpu_backend", "gpu_devices",
             "executable_models", "models", "max_concurrency", "gpu_available", "node_id",
             "cpu_usage", "active_requests"]
        ),
        JSON,
    )
)  # fmt: skip
def test_node_protocol_takes_any_fields(router: Router, body: dict[str, Any]) -> None:
    # Only loopback: a body without executable_models makes the router fetch the node's list.
    body = {**body, "ip_address": "127.0.0.1"}
    for path in ("/v0/nodes", "/v0/health"):
        response = httpx.post(
            f"{router.url}{path}", json=body, headers={"x-node-token": "nt_x"}, timeout=30
        )
        assert_sane(response)


@pytest.mark.parametrize(
    "raw",
    [
        # Both framings: a proxy that trusted Content-Length would see a second request.
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v0/nodes HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Content-Length: 5\r\n\r\nabcde",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\n\r\n",
    ],
)
def test_ambiguous_framing_is_rejected_before_the_app(router: Router, raw: bytes) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert answer.count(b"HTTP/1.1") == 1, "a smuggled second request was answered"
