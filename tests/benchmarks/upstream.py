"""The fast fake node: a raw-ASGI OpenAI-ish server, so the proxy, not the node, is measured.

No framework, no JSON parsing: it answers from pre-encoded bytes. Streaming is chosen by a
substring test on the body, which is all a benchmark body needs.

Environment: ``BENCH_STREAM_CHUNKS`` (SSE chunks per streamed reply, default 16) and
``BENCH_STREAM_DELAY_MS`` (pause between chunks, default 0).
"""

from __future__ import annotations

import asyncio
import json
import os

from llm_router.asgi_util import Receive, Scope, Send, lifespan, read_body

MODEL = "bench-model"

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the benchmark upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15},
    },
    separators=(",", ":"),
).encode()

_MODELS = json.dumps(
    {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}],
    },
    separators=(",", ":"),
).encode()


def _chunk(index: int, content: str | None, finish: str | None) -> bytes:
    delta: dict[str, str] = {"content": content} if content is not None else {}
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _stream_chunks(count: int) -> list[bytes]:
    chunks = [_chunk(i, f"tok{i} ", None) for i in range(max(count - 1, 0))]
    chunks.append(_chunk(count, None, "stop"))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


_CHUNKS = _stream_chunks(int(os.environ.get("BENCH_STREAM_CHUNKS", "16")))
_DELAY_S = float(os.environ.get("BENCH_STREAM_DELAY_MS", "0")) / 1000.0

#: Far above any benchmark body: the limit is only there because the helper takes one.
BODY_LIMIT = 64 * 1024 * 1024

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def _send_bytes(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_stream(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    for chunk in _CHUNKS:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if _DELAY_S:
            await asyncio.sleep(_DELAY_S)
    await send({"type": "http.response.body", "body": b""})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path: str = scope["path"]
    if scope["method"] == "POST" and path.endswith("/chat/completions"):
        body = await read_body(receive, BODY_LIMIT)
        if b'"stream":true' in body or b'"stream": true' in body:
            await _send_stream(send)
        else:
            await _send_bytes(send, 200, _COMPLETION)
    elif path.endswith("/models"):
        await _send_bytes(send, 200, _MODELS)
    elif path in ("/health", "/healthz"):
        await _send_bytes(send, 200, b"{}")
    else:
        await _send_bytes(send, 404, b'{"error":{"message":"not found","type":"not_found"}}')
