"""Limits on what a client may make a replica hold before its request reaches the app.

uvicorn (httptools) gives a keep-alive timeout and ``limit_concurrency`` (a 503 per
request, while every open socket still holds a descriptor). It has no bound on the size
of a request head, no deadline for reading a head or a body, and no cap on open
connections. ``LimitedHttpTools`` adds those four, before authentication, at the cost of a
counter and a timer per request:

- the request head (request line and headers) is bounded in bytes: past it the client gets
  431 and the connection closes, after at most one socket read beyond the bound;
- the head must arrive within ``header_timeout_s`` of the connection opening (or of the
  first byte of a later request on it): else 408 and close. An idle new connection counts;
- the body must arrive within ``body_timeout_s`` of the end of the head: else the
  connection closes (the app sees a disconnect);
- a replica holds at most ``max_connections`` client connections: one more is answered 503
  and closed at once, so an idle crowd cannot exhaust the process's descriptors.

The response is not bounded here: a long stream is the product working. It is only
corked: uvicorn writes a response's status line and headers, then its body, as two socket
writes; ``LimitedHttpTools`` holds the first until the second (or the end of the loop
turn), so a whole answer leaves in one ``send`` (measured: one system call less per
request, a few per cent of a replica's CPU).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_CLOSE_HEADERS = b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"


def _reply(status: bytes, text: bytes) -> bytes:
    length = b"content-length: " + str(len(text)).encode() + b"\r\n"
    return b"HTTP/1.1 " + status + b"\r\n" + _CLOSE_HEADERS + length + b"\r\n" + text


_TOO_LARGE = _reply(b"431 Request Header Fields Too Large", b"request head too large\n")
_HEAD_TIMEOUT = _reply(b"408 Request Timeout", b"request head not received in time\n")
_TOO_MANY = _reply(b"503 Service Unavailable", b"too many open connections\n")


class CorkedTransport:
    """A connection's transport as one response cycle sees it: the cycle's first write (the
    status line and headers) waits for its second or for the end of the loop turn, and goes
    out with it; every later write goes straight through.

    Nothing else writes to the connection while a cycle's response is under way, and a
    close flushes first, so no byte changes order.
    """

    __slots__ = ("_held", "_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._held = True
        self._pending = b""
        self._loop = loop

    def write(self, data: bytes) -> None:
        if not self._held:
            self._transport.write(data)
        elif self._pending:
            self._held = False
            self._transport.write(self._pending + data)
            self._pending = b""
        else:
            self._pending = bytes(data)
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._held = False
        if self._pending:
            data, self._pending = self._pending, b""
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


class LimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; ``limits`` is set per server."""

    limits: EdgeLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._reading_head = True
        self._head_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None

    @classmethod
    def with_limits(cls, limits: EdgeLimits) -> type[LimitedHttpTools]:
        return type("LimitedHttpTools", (cls,), {"limits": limits})

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            self._refuse(_TOO_MANY)
            return
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Still inside the head after this read: every byte counted so far is head.
        if self._reading_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(_TOO_LARGE)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a refusal already answered and closed
            super().send_400_response(msg)

    # --- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._arm(self.limits.body_timeout_s)
        existing = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not existing:  # not an upgrade
            self.cycle.transport = CorkedTransport(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._disarm()
        # The next request's count starts with the read after the one that ends this one.
        self._head_bytes = 0
        super().on_message_complete()

    # --- deadlines ----------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self._reading_head:
            self._refuse(_HEAD_TIMEOUT)
        elif not self.transport.is_closing():
            self._refused = True
            self.transport.close()

    def _refuse(self, reply: bytes) -> None:
        self._refused = True
        self._disarm()
        if not self.transport.is_closing():
            # Answer only when no earlier (pipelined) response is still being written.
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(reply)
            self.transport.close()
