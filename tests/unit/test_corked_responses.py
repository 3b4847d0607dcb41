"""The replica's HTTP protocol sends a response's head with its body: uvicorn's real
protocol class, fed a real request, over a transport that records each write."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from llm_router.edge_limits import EdgeLimits, LimitedHttpTools

LIMITS = EdgeLimits(max_header_bytes=16384, header_timeout_s=5, body_timeout_s=5, max_connections=8)
GET = b"GET /x HTTP/1.1\r\nHost: router\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def serve(
    app: Any, request: bytes, transport: RecordingTransport | None = None
) -> RecordingTransport:
    """Feed ``request`` to a fresh connection; return once its response is complete."""
    protocol_class = LimitedHttpTools.with_limits(LIMITS)
    config = Config(app=app, http=protocol_class, lifespan="off", log_level="warning")
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = transport or RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(1000):  # a bounded wait for the app's task, not a timing assertion
        await asyncio.sleep(0)
        cycle = protocol.cycle
        if cycle is not None and cycle.response_complete:
            break
    await asyncio.sleep(0)  # the end-of-turn flush, had anything been held
    protocol.connection_lost(None)
    return transport


def whole(body: bytes) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_a_whole_answer_leaves_in_one_write() -> None:
    transport = await serve(whole(b"hello"), GET)
    [written] = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert written.endswith(b"\r\n\r\nhello")


async def test_a_stream_sends_its_head_with_the_first_chunk_then_each_chunk() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in (b"one", b"two"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    transport = await serve(app, GET)
    head_and_first, second, end = transport.writes
    assert head_and_first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head_and_first.endswith(b"\r\n\r\n3\r\none\r\n")
    assert (second, end) == (b"3\r\ntwo\r\n", b"0\r\n\r\n")


async def test_a_head_whose_body_is_late_is_not_held_back() -> None:
    transport = RecordingTransport()
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"4")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the loop turn that started the reply is over
        seen.append(len(transport.writes))
        await send({"type": "http.response.body", "body": b"late"})

    await serve(app, GET, transport)
    assert seen == [1]  # the head had gone out on its own
    head, body = transport.writes
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"late"


async def test_closing_after_the_answer_flushes_first() -> None:
    transport = await serve(whole(b"bye"), b"GET /x HTTP/1.0\r\nHost: router\r\n\r\n")
    assert transport.closed
    assert b"".join(transport.writes).endswith(b"\r\n\r\nbye")
