"""Small raw-ASGI helpers: the router's proxied routes, the node API and the simulated
runtime all use them.

Each sits on a hot path (every routed request crosses them), so they speak ASGI directly
instead of going through a framework's request/response objects.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    """The client disconnected before we read its whole request."""


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the server's start-up and shutdown messages, for an app with nothing to set up."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def error_json(
    message: str, error_type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


async def send_json(
    send: Send,
    status: int,
    payload: Any,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *JSON_HEADERS,
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send,
    status: int,
    message: str,
    error_type: str,
    code: str | None,
    param: str | None = None,
) -> None:
    await send_json(send, status, error_json(message, error_type, code, param))


def abort_transport(send: Send) -> bool:
    """Cut the client's TCP connection at once; False when the server does not allow it.

    ASGI has no message for this. Under uvicorn ``send`` is bound to the request cycle that
    owns the transport; aborting it is how a proxy tells its client "the upstream died"
    without inventing a status code after the headers (or the first bytes) are gone.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return False
    transport.abort()
    return True


async def abort_connection(receive: Receive, send: Send) -> None:
    """Close the connection without sending a byte, then wait for the server to notice.

    Waiting for ``http.disconnect`` matters: a server that still thinks the client is
    there would answer the unfinished response with a 500 of its own.
    """
    if not abort_transport(send):
        raise StreamBroken("connection dropped on purpose")
    while (await receive())["type"] != "http.disconnect":
        pass


class StreamBroken(Exception):
    """Raised inside a response to make the server cut the connection."""
