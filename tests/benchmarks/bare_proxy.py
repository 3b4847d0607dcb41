"""The floor of any Python router here: Litestar forwarding to the upstream, nothing else.

Same server stack and HTTP client as the router's hot path (uvicorn + uvloop + httptools,
one pooled ``aiohttp.ClientSession``), no routing, no Redis, no logging. Run with
``uvicorn tests.benchmarks.bare_proxy:create_app --factory``; ``BENCH_UPSTREAM_URL`` names
the upstream base URL (``http://127.0.0.1:PORT``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
from litestar import Litestar, Request, post
from litestar.datastructures import State
from litestar.response import Response, Stream

_SESSION = "session"


async def _relay(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    finally:
        upstream.release()


@post("/v1/chat/completions", status_code=200)
async def chat(request: Request[object, object, State]) -> Response[bytes] | Stream:
    session: aiohttp.ClientSession = request.app.state[_SESSION]
    body = await request.body()
    upstream = await session.post(
        request.app.state["url"], data=body, headers={"Content-Type": "application/json"}
    )
    content_type = upstream.headers.get("Content-Type", "application/json")
    if content_type.startswith("text/event-stream"):
        return Stream(_relay(upstream), status_code=upstream.status, media_type=content_type)
    async with upstream:
        data = await upstream.read()
    return Response(data, status_code=upstream.status, media_type=content_type)


def create_app() -> Litestar:
    base = os.environ["BENCH_UPSTREAM_URL"].rstrip("/")

    async def open_session(app: Litestar) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=60)
        app.state[_SESSION] = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)
        )
        app.state["url"] = f"{base}/v1/chat/completions"

    async def close_session(app: Litestar) -> None:
        await app.state[_SESSION].close()

    return Litestar(
        route_handlers=[chat],
        on_startup=[open_session],
        on_shutdown=[close_session],
        openapi_config=None,
        logging_config=None,
    )
