"""ASGI middleware: a request whose credentials are ambiguous gets 400 on every endpoint.

It sits in front of routing, so the inference endpoints (raw ASGI), the Litestar handlers
and the probes all see one rule, and no handler has to ask which copy of a header counts.
"""

from __future__ import annotations

import orjson
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from llm_router.auth import ambiguous_credentials
from llm_router.routing.endpoints import dialect_of


def refuse_ambiguous_credentials(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        is_http = scope["type"] == ScopeType.HTTP
        problem = ambiguous_credentials(scope["headers"]) if is_http else None
        if problem is None:
            await app(scope, receive, send)
            return
        body = orjson.dumps(problem.body(dialect_of(scope["path"])))
        await send(
            {
                "type": "http.response.start",
                "status": problem.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return middleware
