"""A node the router trusts reaches no further than its answer: redirects are not followed,
answers are bounded in size and time, foreign content types fail the attempt, and only
allow-listed headers reach the client. Real router process, hostile nodes on raw asyncio.

Each case has a model of its own, served by a hostile node that is the most capable on
paper (so it is tried first) and by one healthy simulated node (the failover target).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from integration.conftest import open_cluster
from integration.hostile import (
    Behaviour,
    HostileNode,
    Request,
    completion,
    head,
    hostile_node,
    model_of,
    respond,
)
from integration.probes import chat_body
from integration.procs import Cluster, Router

pytestmark = pytest.mark.redis

MAX_RESPONSE_BYTES = 1024 * 1024
RESPONSE_BODY_TIMEOUT_S = 1.0
CASES = ["redirect-307", "redirect-302", "huge-declared", "huge-chunked", "trickle", "html"]
PREFERRED = {"gpu_capability_score": 10000}


class Fleet:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.router: Router = cluster.start_router(
            max_response_bytes=MAX_RESPONSE_BYTES,
            response_body_timeout_s=RESPONSE_BODY_TIMEOUT_S,
            node_timeout_s=10,  # hostile nodes beat from test threads: late on a busy machine
        )
        self.healthy = cluster.start_node(CASES, backend="cpu")
        self.healthy_id = cluster.wait_all()[self.healthy.machine_name]

    def post(self, model: str, **extra: object) -> httpx.Response:
        return httpx.post(
            f"{self.router.api_base}/chat/completions", json=chat_body(model, **extra), timeout=20
        )


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with open_cluster(redis_url) as cluster:
        yield Fleet(cluster)


@pytest.fixture
def trap() -> Iterator[HostileNode]:
    """Where a redirect points: it must never hear from the router."""

    async def stolen(request: Request, writer: asyncio.StreamWriter) -> None:
        await respond(writer, 200, completion(model_of(request), "stolen"))

    with hostile_node(stolen) as server:
        yield server


def assert_served_by_the_healthy_node(fleet: Fleet, response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["x-llm-router-node"] == fleet.healthy_id
    assert response.json()["choices"][0]["message"]["content"].startswith("Hello from")
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("status", [307, 302])
def test_a_redirect_is_a_failed_attempt_and_never_followed(
    fleet: Fleet, trap: HostileNode, status: int
) -> None:
    async def redirect(_request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head(status, [("Location", f"{trap.url}/steal"), ("Content-Length", "0")]))
        await writer.drain()

    with hostile_node(redirect) as node:
        node.register(fleet.router.url, [f"redirect-{status}"], **PREFERRED)
        response = fleet.post(f"redirect-{status}")
        assert node.hits["/v1/chat/completions"] == 1, "the hostile node was not tried"
    assert_served_by_the_healthy_node(fleet, response)
    assert "location" not in response.headers
    assert sum(trap.hits.values()) == 0, "the router followed the redirect"


@pytest.mark.parametrize("declared", [True, False], ids=["huge-declared", "huge-chunked"])
def test_an_answer_over_the_size_bound_fails_the_attempt(fleet: Fleet, declared: bool) -> None:
    size = 4 * MAX_RESPONSE_BYTES
    model = "huge-declared" if declared else "huge-chunked"

    async def huge(_request: Request, writer: asyncio.StreamWriter) -> None:
        if declared:
            writer.write(head(200, [("Content-Type", "application/json"),
                                    ("Content-Length", str(size))]))  # fmt: skip
        else:  # no length: the body ends when the connection does
            writer.write(head(200, [("Content-Type", "application/json"),
                                    ("Connection", "close")]))  # fmt: skip
        chunk = b" " * 65536
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    with hostile_node(huge) as node:
        node.register(fleet.router.url, [model], **PREFERRED)
        response = fleet.post(model)
        assert node.hits["/v1/chat/completions"] == 1
    assert_served_by_the_healthy_node(fleet, response)


def test_a_trickling_answer_is_cut_by_the_body_deadline(fleet: Fleet) -> None:
    async def trickle(request: Request, writer: asyncio.StreamWriter) -> None:
        body = completion(model_of(request))
        writer.write(head(200, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body)))]))  # fmt: skip
        for byte in body:  # one byte every 0.2 s: far under any idle timeout, never done
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)

    with hostile_node(trickle) as node:
        node.register(fleet.router.url, ["trickle"], **PREFERRED)
        response = fleet.post("trickle")
        assert node.hits["/v1/chat/completions"] == 1
    assert_served_by_the_healthy_node(fleet, response)


def test_a_page_of_the_nodes_choosing_is_a_failed_attempt(fleet: Fleet) -> None:
    async def html(_request: Request, writer: asyncio.StreamWriter) -> None:
        page = b"<html><script>fetch('/v0/nodes')</script></html>"
        await respond(writer, 200, page, content_type="text/html")

    with hostile_node(html) as node:
        node.register(fleet.router.url, ["html"], **PREFERRED)
        response = fleet.post("html")
        assert node.hits["/v1/chat/completions"] == 1
    assert_served_by_the_healthy_node(fleet, response)
    assert response.headers["content-type"].startswith("application/json")


def test_node_headers_reach_the_client_through_an_allow_list(fleet: Fleet) -> None:
    async def loud(request: Request, writer: asyncio.StreamWriter) -> None:
        await respond(
            writer,
            200,
            completion(model_of(request)),
            headers=[
                ("Location", "https://evil.example/"),
                ("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Allow-Credentials", "true"),
                ("Strict-Transport-Security", "max-age=63072000; includeSubDomains"),
                ("Alt-Svc", 'h3=":443"'),
                ("Set-Cookie", "session=stolen; Path=/"),
                ("Connection", "keep-alive, X-Ratelimit-Remaining-Requests"),
                ("X-Ratelimit-Remaining-Requests", "hop-by-hop by the node's own say-so"),
                ("X-Ratelimit-Limit-Requests", "100"),
                ("Openai-Processing-Ms", "12"),
                ("Cache-Control", "no-store"),
                ("X-Request-ID", "runtime-req-7"),
                ("X-Powered-By", "hostile"),
                ("X-LLM-Router-Node", "someone-else"),
            ],
        )

    with hostile_node(loud) as node:
        node.register(fleet.router.url, ["loud"], **PREFERRED)
        response = fleet.post("loud")
        assert response.status_code == 200, response.text
        assert response.headers["x-llm-router-node"] == node.node_id
    headers = response.headers
    for name in (
        "location",
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "strict-transport-security",
        "alt-svc",
        "set-cookie",
        "x-ratelimit-remaining-requests",
        "x-powered-by",
    ):
        assert name not in headers, name
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["openai-processing-ms"] == "12"
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers.get_list("x-llm-router-node") == [node.node_id]
    # The router's request id is the only one under that name; the runtime's has its own.
    [request_id] = headers.get_list("x-request-id")
    assert request_id != "runtime-req-7"
    assert headers["x-llm-router-node-request-id"] == "runtime-req-7"


def _models_page(padding: int) -> bytes:
    return b'{"object": "list", "data": [{"id": "fetched"}], "pad": "' + b"x" * padding + b'"}'


async def _huge_models(_request: Request, writer: asyncio.StreamWriter) -> None:
    await respond(writer, 200, _models_page(9 * 1024 * 1024))  # over the 8 MiB default


async def _deep_models(_request: Request, writer: asyncio.StreamWriter) -> None:
    await respond(writer, 200, b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


async def _trickled_models(_request: Request, writer: asyncio.StreamWriter) -> None:
    page = _models_page(100)
    writer.write(head(200, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(page)))]))  # fmt: skip
    for byte in page:  # a byte every 0.2 s: each read is quick, the whole takes 30 s
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        (_huge_models, f"more than {8 * 1024 * 1024} bytes"),
        (_deep_models, "invalid JSON"),
        (_trickled_models, "did not answer within"),
    ],
    ids=["huge", "deep", "trickle"],
)
def test_the_registration_fetch_of_a_nodes_models_is_bounded(
    fleet: Fleet, behaviour: Behaviour, why: str
) -> None:
    with hostile_node(behaviour) as node:
        response = node.register(fleet.router.url, None)
        assert node.hits["/v1/models"] == 1
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "node_models_unreachable"
    assert f"{node.url}/v1/models" in error["message"]
    assert why in error["message"]
    # The router is fine and serves on.
    assert_served_by_the_healthy_node(fleet, fleet.post("html"))
