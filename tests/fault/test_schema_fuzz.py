"""Fuzzing the router's HTTP surface: Schemathesis from its own OpenAPI schema, and
Hypothesis-generated JSON and bytes at the bodies the schema does not describe.

Whatever comes in, the router answers below 500 and every error it answers itself is in
the dialect of the endpoint (Anthropic's shape on ``/v1/messages``, OpenAI's elsewhere);
a node's own answer (it carries ``x-llm-router-node``) passes through as the node sent it.
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
from llm_router.routing.endpoints import Dialect, dialect_of

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


def assert_sane(response: Any, path: str) -> None:
    status = response.status_code
    assert status < 500 or status in (501, 502, 503, 504), (status, response.text)
    assert "Traceback" not in response.text
    if status < 400 or any(k.lower() == "x-llm-router-node" for k in response.headers):
        return  # success, or the node's own answer passed through
    payload = response.json()
    if dialect_of(path) is Dialect.ANTHROPIC:
        assert set(payload) == {"type", "error"} and payload["type"] == "error", payload
        assert set(payload["error"]) == {"type", "message"}, payload
        message = payload["error"]["message"]
    else:
        assert set(payload) == {"error"}, payload
        assert {"message", "type", "param", "code"} <= set(payload["error"]), payload
        message = payload["error"]["message"]
    # A gateway error is allowed (the fuzzer may drain or delete the node), a crash is not.
    assert message != "internal error", payload


def test_every_documented_operation(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            assert_sane(case.call(timeout=30), case.formatted_path)

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
#: Every other JSON endpoint of the table, Anthropic's included.
MORE_JSON_PATHS = [
    "/v1/responses",
    "/v1/responses/input_tokens",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/rerank",
    "/rerank",
    "/v1/score",
    "/v1/audio/speech",
    "/v1/images/generations",
]
FORM_PATHS = ["/v1/audio/transcriptions", "/v1/audio/translations"]


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
            "previous_response_id": st.text(max_size=40) | JSON,
            "query": JSON,
            "documents": JSON,
            "text_1": JSON,
            "text_2": JSON,
        },
    )


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(OPENAI_PATHS + MORE_JSON_PATHS), body=openai_bodies() | JSON)
def test_openai_endpoints_take_any_json(router: Router, path: str, body: Any) -> None:
    response = httpx.post(f"{router.url}{path}", content=json.dumps(body), timeout=30)
    assert_sane(response, path)


FIELD = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(FORM_PATHS),
    fields=st.dictionaries(st.sampled_from(["model", "language", "response_format"]), FIELD),
    model=st.sampled_from([MODEL, "absent", ""]) | FIELD,
    with_model=st.booleans(),
    upload=st.binary(max_size=300),
    mangle=st.sampled_from(["none", "truncate", "no-boundary", "garbage"]),
)
def test_multipart_endpoints_take_any_form(
    router: Router,
    path: str,
    fields: dict[str, str],
    model: str,
    with_model: bool,
    upload: bytes,
    mangle: str,
) -> None:
    data = {**fields, **({"model": model} if with_model else {})}
    request = httpx.Request(
        "POST", f"{router.url}{path}", data=data, files={"file": ("a.wav", upload)}
    )
    body, content_type = request.read(), request.headers["content-type"]
    if mangle == "truncate":
        body = body[: len(body) // 2]
    elif mangle == "no-boundary":
        content_type = "multipart/form-data"
    elif mangle == "garbage":
        body = upload
    response = httpx.post(
        f"{router.url}{path}", content=body, headers={"content-type": content_type}, timeout=30
    )
    assert_sane(response, path)


#: Anything printable a URL path segment can carry as is (beyond ASCII too).
ID_CHARS = st.characters(
    min_codepoint=33,
    max_codepoint=0x2FF,
    blacklist_characters="/?#%\x7f",
    blacklist_categories=("Cc",),
)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "DELETE", "POST"]),
    ident=st.text(ID_CHARS, min_size=1, max_size=300),
    cancel=st.booleans(),
)
def test_stored_response_paths_take_any_id(
    router: Router, method: str, ident: str, cancel: bool
) -> None:
    path = f"/v1/responses/{ident}" + ("/cancel" if cancel else "")
    response = httpx.request(method, f"{router.url}{path}", timeout=30)
    assert_sane(response, path)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from([*OPENAI_PATHS, *MORE_JSON_PATHS, *FORM_PATHS, "/v0/nodes", "/v0/health"]),
    raw=st.binary(max_size=200),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/x-www"]),
)
def test_endpoints_take_any_bytes(router: Router, path: str, raw: bytes, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(f"{router.url}{path}", content=raw, headers=headers, timeout=30)
    assert_sane(response, path)


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
        assert_sane(response, path)


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
