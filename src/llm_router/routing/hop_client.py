"""The HTTP/1.1 client of the node hop: keep-alive connections on asyncio protocols.

The proxy needs little of a general client: send one request with a byte body, read the
status and headers, read the body as it comes, put the connection back. A general client
pays per request for what the hop never uses (cookie jars, redirects, multidict copies,
a timeout context of its own, tracing hooks); measured side by side with aiohttp's, this
one costs a fraction of its CPU per request (``tests/benchmarks/hop_client_bench.py``).

Responses are parsed by ``httptools`` (llhttp). Each (scheme, host, port) has a stack of
idle connections; the most recently used is reused first, so the others age out after
``KEEPALIVE_S``. A connection is pooled again only when its response was read to the end
and the node allows keep-alive; anything else (an abandoned body, an error, a close
requested by either side) closes it. Redirects are answers like any other: never followed.

Timeouts: ``connect_timeout_s`` covers TCP connect and the TLS handshake; every read of
the headers or the body that waits longer than ``idle_timeout_s`` for a byte raises
``ReadTimeout`` (one timer per connection, re-armed only when it fires, not one per read).
Reading pauses above ``HIGH_WATER`` buffered bytes and resumes once the reader drained
below ``LOW_WATER``, so a slow client slows its node instead of filling our memory.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from typing import cast

import httptools

KEEPALIVE_S = 30.0
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
#: Bodies up to this size leave in the same write as the head (one send, one copy).
_JOIN_BODY_BELOW = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: What may not appear raw in a request target: controls, space, DEL and non-ASCII.
_UNSAFE_IN_TARGET = re.compile(r"[^\x21-\x7e]")


class HopError(Exception):
    """The node could not be used for this request; the subclass says how."""


class ConnectFailed(HopError):
    """The connection was refused, the host unreachable, the name unknown."""

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


class TLSFailed(HopError):
    """The TLS handshake failed; ``__cause__`` is the ``ssl`` error with the reason."""


class ConnectTimeout(HopError):
    """No connection (TCP and TLS) within the connect timeout."""


class Disconnected(HopError):
    """The connection ended before the response did."""


class BadResponse(HopError):
    """The node's bytes are not an HTTP/1.x response."""


class ReadTimeout(TimeoutError):
    """A read waited longer than the idle timeout for the node's next byte."""


class Headers:
    """A response's headers as sent, names lower-cased; lookups scan (a node sends few)."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self._pairs:
            if key == name:
                return value
        return default

    def getall(self, name: str) -> list[str]:
        return [value for key, value in self._pairs if key == name]

    def items(self) -> list[tuple[str, str]]:
        return self._pairs

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self._pairs)


class HopResponse:
    """One response: ``status``, ``headers``, ``content_length`` once the head is in, then
    ``readany()`` (b"" at the end) or ``async for``; ``release()`` when done with it."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_released",
        "_waiter",
        "buffered",
        "chunked",
        "content_length",
        "got_bytes",
        "head_done",
        "headers",
        "keep_alive",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers = Headers([])
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = False
        self.head_done = False
        self.got_bytes = False
        self.buffered = 0
        self._chunks: collections.deque[bytes] = collections.deque()
        self._done = False
        self._error: BaseException | None = None
        self._released = False
        self._waiter: asyncio.Future[None] | None = None

    async def readany(self) -> bytes:
        """Whatever body bytes have arrived (waiting for some if none), b"" at the end."""
        chunks = self._chunks
        while not chunks:
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()
        if len(chunks) == 1:
            data = chunks.popleft()
        else:
            data = b"".join(chunks)
            chunks.clear()
        self.buffered -= len(data)
        if self.buffered < LOW_WATER:
            self._conn.resume()
        return data

    def __aiter__(self) -> HopResponse:
        return self

    async def __anext__(self) -> bytes:
        data = await self.readany()
        if not data:
            raise StopAsyncIteration
        return data

    def release(self) -> None:
        """Done with this response: its connection is pooled if it can serve another."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if self._done and self.keep_alive and self._error is None:
            conn.pool_again()
        else:
            conn.close()

    async def _wait(self) -> None:
        conn = self._conn
        waiter = self._waiter = conn.loop.create_future()
        conn.waiting()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # What the connection reports, as llhttp parses.

    def _header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers._pairs.append((key, text))
        if key == "content-length":
            self.content_length = int(text) if text.isdigit() else None
        elif key == "transfer-encoding" and "chunked" in text.lower():
            self.chunked = True

    def _body(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _complete(self, keep_alive: bool) -> None:
        self._done = True
        self.keep_alive = keep_alive
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._done:
            return
        if self._error is None:
            self._error = error
        self._wake()

    def _lost(self, exc: BaseException | None) -> None:
        # An answer without a length and not chunked ends where the connection does.
        if exc is None and self.head_done and self.content_length is None and not self.chunked:
            self._complete(keep_alive=False)
            return
        what = "before the response headers" if not self.head_done else "mid-response"
        error = Disconnected(f"the node closed the connection {what}")
        error.__cause__ = exc
        self._fail(error)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to a node, and llhttp's callbacks for its answers."""

    def __init__(self, pool: HopClient, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: HopResponse | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self._wait_started = 0.0
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response._done:
            # Bytes nobody asked for: the connection is not ours to reuse.
            self.close()
            return
        self._last_data = self.loop.time()
        response.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            error = BadResponse(f"the node sent a malformed response: {exc}")
            error.__cause__ = exc
            response._fail(error)
            self.close()

    def eof_received(self) -> bool:
        return False  # a half-closed node connection is of no use: close it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        response = self.response
        if response is not None:
            response._lost(exc)

    # llhttp callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response._header(name, value)

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            response.headers = Headers([])
            response.content_length = None
            response.chunked = False
            return
        response.status = status
        response.head_done = True
        response._wake()

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._body(body)

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        if response.head_done:
            response._complete(self.parser.should_keep_alive())

    # the client's side

    def send(self, head: bytes, body: bytes) -> HopResponse:
        transport = self.transport
        assert transport is not None
        response = self.response = HopResponse(self)
        if self.closed:  # lost between its connect and this first request
            response._lost(None)
            return response
        if len(body) < _JOIN_BODY_BELOW:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        return response

    def waiting(self) -> None:
        """A read starts waiting: make sure a timer will look at it."""
        self._wait_started = now = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(now + self.pool.idle_timeout_s, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        response = self.response
        if response is None or response._waiter is None:
            return
        due = max(self._wait_started, self._last_data) + self.pool.idle_timeout_s
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._check_idle)
            return
        response._fail(ReadTimeout(f"no byte from the node in {self.pool.idle_timeout_s:g} s"))
        self.close()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def pool_again(self) -> None:
        self.response = None
        self.resume()
        if self.closed:
            return
        self.idle_since = self.loop.time()
        self.pool.put(self)

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class HopClient:
    """Requests to nodes over pooled keep-alive connections, one client per replica."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        idle_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._origins: dict[str, tuple[tuple[str, str, int], bytes]] = {}
        self._sweep: asyncio.TimerHandle | None = None

    async def request(
        self, method: str, origin: str, target: str, body: bytes, headers: dict[str, str]
    ) -> HopResponse:
        """Send ``method target`` to ``origin`` (``scheme://host:port``) and return once the
        response's head is in. Raises a ``HopError`` or ``ReadTimeout``."""
        known = self._origins.get(origin)
        if known is None:
            known = self._origins[origin] = _parse_origin(origin)
        key, host_line = known
        head = _head(method, target, host_line, headers, body)
        conn = self._take(key)
        if conn is None:
            return await self._exchange(await self._connect(key), head, body)
        try:
            return await self._exchange(conn, head, body)
        except Disconnected:
            # A pooled connection the node closed while we sent (its keep-alive expired,
            # or it restarted) fails before a single response byte. Sending again on a
            # fresh connection is safe: a node that answered nothing has committed nothing
            # to us, and the proxy sends the very same request to another node on exactly
            # this failure anyway. Once any byte came back, the node acted: never again.
            if conn.response is None or conn.response.got_bytes:
                raise
        return await self._exchange(await self._connect(key), head, body)

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes) -> HopResponse:
        response = conn.send(head, body)
        try:
            while not response.head_done:
                if response._error is not None:
                    raise response._error
                await response._wait()
        except BaseException:
            conn.close()  # cancelled, timed out or broken: its answer is nobody's now
            raise
        return response

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_usable = self.loop.time() - KEEPALIVE_S
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():
                continue
            if conn.idle_since < oldest_usable:
                conn.close()
                continue
            return conn
        return None

    def put(self, conn: _Connection) -> None:
        self._idle.setdefault(conn.key, []).append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(KEEPALIVE_S / 2, self._expire)

    def _expire(self) -> None:
        """Close connections idle for longer than the keep-alive; the stacks are oldest
        first, so each is cut at its first young connection."""
        self._sweep = None
        oldest_usable = self.loop.time() - KEEPALIVE_S
        left = False
        for idle in self._idle.values():
            young = 0
            while young < len(idle) and idle[young].idle_since < oldest_usable:
                idle[young].close()
                young += 1
            del idle[:young]
            left = left or bool(idle)
        if left:
            self._sweep = self.loop.call_later(KEEPALIVE_S / 2, self._expire)

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        where = f"{host}:{port}"
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self, key),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(
                f"no connection to {where} in {self.connect_timeout_s:g} s"
            ) from exc
        except ssl.SSLError as exc:  # before OSError: it is one
            raise TLSFailed(f"TLS with {where} failed: {exc}") from exc
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {where}: {exc}", exc.errno) from exc
        return conn

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _parse_origin(origin: str) -> tuple[tuple[str, str, int], bytes]:
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ValueError(f"not an http(s) origin: {origin!r}")
    hostport = rest.rstrip("/")
    if hostport.startswith("["):  # [v6]:port
        host, _, tail = hostport[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    port = int(port_text) if port_text else _DEFAULT_PORTS[scheme]
    shown = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        shown = f"{shown}:{port}"
    return (scheme, host, port), f"Host: {shown}\r\n".encode("latin-1")


def _head(
    method: str, target: str, host_line: bytes, headers: dict[str, str], body: bytes
) -> bytes:
    if _UNSAFE_IN_TARGET.search(target):  # the server hands us the path decoded
        target = _UNSAFE_IN_TARGET.sub(_percent_encoded, target)
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    if body or method in _BODY_METHODS:
        lines.append(f"content-length: {len(body)}\r\n")
    text = "".join(lines)
    # A CR or LF inside a header name or value would split the request: refuse it.
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("a request line or header contains a line break")
    request_line, _, rest = text.partition("\r\n")
    return b"".join(
        (request_line.encode("latin-1"), b"\r\n", host_line, rest.encode("latin-1"), b"\r\n")
    )


def _percent_encoded(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode())
