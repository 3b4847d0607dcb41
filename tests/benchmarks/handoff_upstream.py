"""The node of the hand-off benchmark: a raw-ASGI streaming upstream that keeps a log.

Each chat completion is streamed: the first chunk goes out as soon as the request has
arrived, the last one ``HANDOFF_HOLD_MS`` later, so a request holds its slot for that long.
For every request the log keeps the id the client put in the body's ``user`` field, when
the request arrived and when its last byte was written, on ``time.monotonic_ns()``: the
machine's one monotonic clock, which the benchmark's client reads too.

``GET /log`` returns the log (and ``DELETE /log`` empties it) as JSON rows
``[id, arrived_ns, ended_ns]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from typing import Any

from tests.benchmarks.upstream import BODY_LIMIT

from llm_router.asgi_util import Receive, Scope, Send, lifespan, read_body

_HOLD_S = float(os.environ.get("HANDOFF_HOLD_MS", "20")) / 1000
_USER = re.compile(rb'"user"\s*:\s*"([^"]*)"')
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_JSON = [(b"content-type", b"application/json")]
_FIRST = (
    b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
)
_LAST = (
    b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
    b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)

#: id, arrived, ended (ns); ended is 0 while the request runs.
_log: list[list[Any]] = []


async def _json(send: Send, body: bytes, status: int = 200) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _completion(receive: Receive, send: Send) -> None:
    body = await read_body(receive, BODY_LIMIT)
    found = _USER.search(body)
    row = [found.group(1).decode() if found else "", time.monotonic_ns(), 0]
    _log.append(row)
    await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    await send({"type": "http.response.body", "body": _FIRST, "more_body": True})
    await asyncio.sleep(_HOLD_S)
    await send({"type": "http.response.body", "body": _LAST, "more_body": False})
    row[2] = time.monotonic_ns()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path: str = scope["path"]
    if scope["method"] == "POST" and path.endswith("/chat/completions"):
        await _completion(receive, send)
    elif path == "/log":
        if scope["method"] == "DELETE":
            _log.clear()
        await _json(send, json.dumps(_log).encode())
    elif path in ("/health", "/healthz"):
        await _json(send, b"{}")
    else:
        await _json(send, b'{"error":{"message":"not found","type":"not_found"}}', 404)
