"""The node hop's HTTP client against real local servers, on uvloop and on plain asyncio
(this folder's ``conftest.py`` runs every test on both loops).

The servers are raw asyncio servers, so each test decides exactly which bytes the node
sends, when it closes, and how fast it reads.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from integration.certs import CertAuthority
from llm_router.routing import hop_client
from llm_router.routing.attempts import Verdict, connection_failure
from llm_router.routing.hop_client import (
    HIGH_WATER,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    HopClient,
    HopResponse,
    ReadTimeout,
    TLSFailed,
)

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
Handler = Callable[[Reader, Writer], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Node:
    """A raw HTTP server: ``handler`` serves each connection; connections are counted."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.request_seen = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return  # the loop is closing at the test's end: nothing left to serve
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        self.request_seen.set()
        return head + body

    @property
    def origin(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Node]]]:
    nodes: list[Node] = []

    async def start(handler: Handler) -> Node:
        node = Node(handler)
        node.server = await asyncio.start_server(node._serve, "127.0.0.1", 0)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        assert node.server is not None
        node.server.close()


def client(idle_timeout_s: float = 5.0, context: ssl.SSLContext | None = None) -> HopClient:
    return HopClient(connect_timeout_s=2.0, idle_timeout_s=idle_timeout_s, ssl_context=context)


async def body_of(response: HopResponse) -> bytes:
    parts = [chunk async for chunk in response]
    response.release()
    return b"".join(parts)


async def post(hop: HopClient, node: Node, body: bytes = b'{"a":1}') -> HopResponse:
    headers = {"content-type": "application/json"}
    return await hop.request("POST", node.origin, "/v1/chat/completions", body, headers)


async def test_keep_alive_reuses_one_connection_and_frames_the_request(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    async def answer_forever(reader: Reader, writer: Writer) -> None:
        while True:
            await node.read_request(reader)
            writer.write(OK)

    node = await serve(answer_forever)
    hop = client()
    for _ in range(3):
        response = await post(hop, node)
        assert response.status == 200
        assert response.headers.get("content-type") == "application/json"
        assert response.content_length == 2
        assert await body_of(response) == b"{}"
    await hop.close()
    assert node.connections == 1
    port = node.origin.rsplit(":", 1)[1]
    assert node.requests[0] == (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n"
        b"content-type: application/json\r\ncontent-length: 7\r\n\r\n" + b'{"a":1}'
    )


async def test_a_decoded_path_is_sent_percent_encoded(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    async def once(reader: Reader, writer: Writer) -> None:
        await node.read_request(reader)
        writer.write(OK)

    node = await serve(once)
    hop = client()
    response = await hop.request("GET", node.origin, "/v1/responses/a b\r\nx: é", b"", {})
    await body_of(response)
    await hop.close()
    assert node.requests[0].startswith(b"GET /v1/responses/a%20b%0D%0Ax:%20%C3%A9 HTTP/1.1\r\n")


async def test_an_idle_connection_the_node_closed_is_not_handed_out(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    closed = asyncio.Event()

    async def answer_then_close(reader: Reader, writer: Writer) -> None:
        await node.read_request(reader)
        writer.write(OK)  # keep-alive as far as the client knows
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    node = await serve(answer_then_close)
    hop = client()
    assert await body_of(await post(hop, node)) == b"{}"
    await closed.wait()
    for _ in range(5):  # the client's loop sees the FIN
        await asyncio.sleep(0)
    assert await body_of(await post(hop, node)) == b"{}"
    await hop.close()
    assert node.connections == 2
    assert len(node.requests) == 2


async def test_a_reused_connection_lost_before_any_answer_byte_is_retried_once_fresh(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    # The node's keep-alive runs out as the second request arrives: it hangs up unread.
    async def serve_one_then_drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await node.read_request(reader)
        writer.write(OK)
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    node = await serve(serve_one_then_drop)
    hop = client()
    assert await body_of(await post(hop, node)) == b"{}"
    assert await body_of(await post(hop, node)) == b"{}"
    await hop.close()
    assert node.connections == 2


async def test_no_retry_once_the_node_sent_a_byte(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    async def half_answer(reader: Reader, writer: Writer) -> None:
        await node.read_request(reader)
        writer.write(OK)
        await node.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-")
        await writer.drain()
        writer.transport.abort()

    node = await serve(half_answer)
    hop = client()
    assert await body_of(await post(hop, node)) == b"{}"
    with pytest.raises(Disconnected):
        await post(hop, node)
    await hop.close()
    assert node.connections == 1
    assert len(node.requests) == 2


async def test_no_retry_on_a_fresh_connection(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    async def hang_up(reader: Reader, writer: Writer) -> None:
        await node.read_request(reader)
        writer.transport.abort()

    node = await serve(hang_up)
    hop = client()
    with pytest.raises(Disconnected) as raised:
        await post(hop, node)
    await hop.close()
    assert node.connections == 1
    failed = connection_failure("n1", raised.value)
    assert failed.verdict is Verdict.ANSWER
    assert failed.error.message == "node n1 closed the connection before answering"


async def test_chunked_and_content_length_bodies_both_keep_the_connection(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    async def chunked_then_sized(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await node.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (b"data: one\n\n", b"data: two\n\n"):
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await node.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel")
        await writer.drain()
        writer.write(b"lo")
        await node.read_request(reader)
        await reader.read()  # no answer, no hang-up: the third request stays pending

    node = await serve(chunked_then_sized)
    hop = client()
    chunked = await post(hop, node)
    assert chunked.content_length is None
    assert await body_of(chunked) == b"data: one\n\ndata: two\n\n"
    assert await body_of(await post(hop, node)) == b"hello"
    third = asyncio.ensure_future(post(hop, node))
    while len(node.requests) < 3:
        node.request_seen.clear()
        await node.request_seen.wait()
    third.cancel()
    await hop.close()
    assert node.connections == 1


async def test_connection_close_and_http_1_0_answers_are_not_pooled(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
        b'HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{"until": "eof"}',
        OK,
    ]

    async def one_answer(reader: Reader, writer: Writer) -> None:
        await node.read_request(reader)
        answer = answers[node.connections - 1]
        writer.write(answer)
        await writer.drain()
        if answer is not OK:
            return  # closes: the body of the HTTP/1.0 answer ends with the connection
        await reader.read()

    node = await serve(one_answer)
    hop = client()
    assert await body_of(await post(hop, node)) == b"{}"
    assert await body_of(await post(hop, node)) == b'{"until": "eof"}'
    assert await body_of(await post(hop, node)) == b"{}"
    await hop.close()
    assert node.connections == 3


async def test_a_stream_nobody_reads_pauses_the_node_and_resumes_when_drained(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    size = 16 * HIGH_WATER
    payload = bytes(range(256)) * (size // 256)

    async def flood(reader: Reader, writer: Writer) -> None:
        await node.read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode() + payload)
        await writer.drain()
        await reader.read()

    node = await serve(flood)
    hop = client()
    response = await post(hop, node)
    # The client's buffer filling up has no event of its own to wait on.
    while response.buffered <= HIGH_WATER:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    transport = response._conn.transport
    assert transport is not None
    assert not transport.is_reading()  # the node's bytes wait in the kernel, not with us
    assert response.buffered < size
    assert await body_of(response) == payload
    await hop.close()


async def test_a_read_waiting_longer_than_the_idle_timeout_fails(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    async def stall_mid_body(reader: Reader, writer: Writer) -> None:
        await node.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await reader.read()

    node = await serve(stall_mid_body)
    hop = client(idle_timeout_s=0.2)
    response = await post(hop, node)
    assert await response.readany() == b"abc"
    with pytest.raises(ReadTimeout):
        await response.readany()
    response.release()
    await hop.close()


async def test_headers_that_never_come_time_out_too(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    async def silent(reader: Reader, writer: Writer) -> None:
        await node.read_request(reader)
        await reader.read()

    node = await serve(silent)
    hop = client(idle_timeout_s=0.2)
    with pytest.raises(TimeoutError):
        await post(hop, node)
    await hop.close()


async def test_a_refused_connection_names_its_errno() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hop = client()
    with pytest.raises(ConnectFailed) as raised:
        await hop.request("GET", f"http://127.0.0.1:{port}", "/v1/models", b"", {})
    await hop.close()
    assert raised.value.errno == errno.ECONNREFUSED
    failed = connection_failure("n1", raised.value)
    assert failed.verdict is Verdict.UNREACHABLE
    assert failed.error.message == "node n1 could not be reached (connection refused)"


async def test_an_untrusted_certificate_fails_with_its_reason(
    serve: Callable[[Handler], Awaitable[Node]], tmp_path: Path
) -> None:
    leaf = CertAuthority.create(tmp_path, "rogue-ca").issue(tmp_path, "node")
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(leaf.cert, leaf.key)

    async def never(reader: Reader, writer: Writer) -> None:
        await reader.read()

    server = await asyncio.start_server(never, "127.0.0.1", 0, ssl=server_side)
    port = server.sockets[0].getsockname()[1]
    hop = client(context=ssl.create_default_context())
    with pytest.raises(TLSFailed) as raised:
        await hop.request("GET", f"https://127.0.0.1:{port}", "/v1/models", b"", {})
    await hop.close()
    server.close()
    failed = connection_failure("n1", raised.value)
    assert failed.verdict is Verdict.UNREACHABLE
    assert failed.error.message.startswith("node n1 failed TLS (certificate verify failed: ")


async def test_a_trusted_certificate_serves_over_tls(tmp_path: Path) -> None:
    authority = CertAuthority.create(tmp_path, "fleet-ca")
    leaf = authority.issue(tmp_path, "node")
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(leaf.cert, leaf.key)

    async def answer(reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await reader.read()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_side)
    port = server.sockets[0].getsockname()[1]
    hop = client(context=ssl.create_default_context(cafile=authority.cert))
    response = await hop.request("GET", f"https://127.0.0.1:{port}", "/v1/models", b"", {})
    assert await body_of(response) == b"{}"
    await hop.close()
    server.close()


async def test_an_answer_announced_too_large_is_refused_before_its_body(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    # The proxy refuses by content-length without reading: the connection must not be
    # pooled with the unread body still on it.
    async def huge_then_ok(reader: Reader, writer: Writer) -> None:
        await node.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        await reader.read()

    async def ok(reader: Reader, writer: Writer) -> None:
        await node.read_request(reader)
        writer.write(OK)
        await reader.read()

    node = await serve(huge_then_ok)
    hop = client()
    response = await post(hop, node)
    assert response.content_length == 99999999
    response.release()
    node.handler = ok
    assert await body_of(await post(hop, node)) == b"{}"
    await hop.close()
    assert node.connections == 2


async def test_idle_connections_expire_after_the_keepalive(
    serve: Callable[[Handler], Awaitable[Node]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hop_client, "KEEPALIVE_S", 0.2)
    hung_up = asyncio.Event()

    async def answer_then_wait(reader: Reader, writer: Writer) -> None:
        await node.read_request(reader)
        writer.write(OK)
        assert await reader.read() == b""  # the client closed it, not us
        hung_up.set()

    node = await serve(answer_then_wait)
    hop = client()
    assert await body_of(await post(hop, node)) == b"{}"
    await asyncio.wait_for(hung_up.wait(), 10)
    await hop.close()


async def test_a_request_cancelled_before_its_answer_closes_its_connection(
    serve: Callable[[Handler], Awaitable[Node]],
) -> None:
    # Its answer may still come: that connection can serve nobody else.
    hung_up = asyncio.Event()

    async def slow_then_fast(reader: Reader, writer: Writer) -> None:
        request = await node.read_request(reader)
        if b"slow" in request:
            assert await reader.read() == b""
            hung_up.set()
            return
        writer.write(OK)
        await reader.read()

    node = await serve(slow_then_fast)
    hop = client()
    slow = asyncio.ensure_future(post(hop, node, b'"slow"'))
    await node.request_seen.wait()
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    await asyncio.wait_for(hung_up.wait(), 10)
    assert await body_of(await post(hop, node)) == b"{}"
    await hop.close()
    assert node.connections == 2


async def test_a_node_that_never_accepts_is_a_connect_timeout() -> None:
    # A listener whose accept queue is full drops further SYNs: the connect hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        hop = HopClient(connect_timeout_s=0.3, idle_timeout_s=5)
        try:
            with pytest.raises(ConnectTimeout) as raised:
                await hop.request("GET", f"http://127.0.0.1:{port}", "/v1/models", b"", {})
        finally:
            await hop.close()
            for filler in fillers:
                filler.close()
    failed = connection_failure("n1", raised.value)
    assert failed.verdict is Verdict.UNREACHABLE
    assert failed.error.message == "node n1 did not accept a connection in time"
