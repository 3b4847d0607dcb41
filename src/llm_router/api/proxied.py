"""The proxied endpoints as raw ASGI handlers, one per path of the endpoint table.

Handlers stay thin: authenticate, find the model (JSON body, form field or stored
response), hand over to the proxy. The body itself is forwarded as received (never
re-serialised). The hot path skips Litestar's request and response objects (measured:
about 200 µs of CPU per request), and ``front`` serves it before Litestar's routing and
middleware; errors raised before the reply starts are rendered by ``error_reply``, in the
endpoint's dialect, on either path.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from litestar import Request, Response, asgi, route
from litestar._asgi.utils import is_valid_host
from litestar.enums import HttpMethod, ScopeType
from litestar.response import Stream
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from llm_router.api.error_reply import error_reply
from llm_router.api.request_model import body_target, target_of
from llm_router.asgi_util import BodyTooLarge as BodyOverLimit
from llm_router.asgi_util import ClientGone, read_body
from llm_router.auth import Scope as AuthScope
from llm_router.auth import ambiguous_credentials
from llm_router.errors import BodyTooLarge, ClientClosedRequest, InvalidRequest, MethodNotAllowed
from llm_router.routing.endpoints import Endpoint, ModelFrom, routes
from llm_router.routing.ids import new_id
from llm_router.routing.proxy import Call, ProxyReply
from llm_router.security.guard import Guard
from llm_router.tenancy import DEFAULT_TENANCY

if TYPE_CHECKING:
    from llm_router.fleet import Fleet

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(headers: Mapping[str, str]) -> str:
    given = headers.get("x-request-id")
    if given and _REQUEST_ID_RE.match(given):
        return given
    return new_id()


#: A request still running after this long starts watching for its client's disconnect.
#: Short requests never pay for the watcher; long ones (most generations) free their node
#: slot as soon as nobody is left to read the answer.
DISCONNECT_WATCH_AFTER_S = 0.25


async def _read_body(receive: Receive, limit: int) -> bytes:
    try:
        return await read_body(receive, limit)  # type: ignore[arg-type]
    except ClientGone as exc:
        raise ClientClosedRequest("the client disconnected before sending its body") from exc
    except BodyOverLimit as exc:
        raise BodyTooLarge(f"Request body is larger than {limit} bytes") from exc


async def _client_left(receive: Receive) -> None:
    """Return once the client has gone. Only called after the body was read in full, when
    the server's next message can only be the disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


class DisconnectWatch:
    """Watch (after ``after_s``) for the client leaving, and cancel the task that made the
    watch then. One per proxied request: a slotted object rather than closures over a dict,
    since every request pays for making it."""

    __slots__ = ("_gone", "_handle", "_receive", "_task", "_watcher")

    def __init__(self, receive: Receive, *, after_s: float) -> None:
        self._task = asyncio.current_task()
        self._receive = receive
        self._gone = False
        self._watcher: asyncio.Future[None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        if after_s:
            self._handle = asyncio.get_running_loop().call_later(after_s, self._start)
        else:
            self._start()

    def _start(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        await _client_left(self._receive)
        self._gone = True
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> bool:
        """Stop watching; True when the client left."""
        if self._handle is not None:
            self._handle.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        return self._gone

    def absorb(self) -> bool:
        """After a CancelledError: True when it was this watch's (the client left)."""
        task = asyncio.current_task()
        return self.stop() and task is not None and task.uncancel() == 0


def _start_message(reply: ProxyReply) -> Message:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    if reply.chunks is None:
        headers.append((b"content-length", str(len(reply.body)).encode()))
    return {"type": "http.response.start", "status": reply.status, "headers": headers}


async def _send_reply(reply: ProxyReply, start: Message, receive: Receive, send: Send) -> None:
    await send(start)
    if reply.chunks is None:
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})
        return
    # A stream ends when the node ends it or the client leaves, whichever comes first;
    # closing the relay releases the node's lease either way.
    watch = DisconnectWatch(receive, after_s=0)
    try:
        async for chunk in reply.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not watch.absorb():
            raise
    finally:
        watch.stop()
        await reply.chunks.aclose()


def _path_id(endpoint: Endpoint, path: str) -> str:
    found = endpoint.pattern.match(path)
    return found["id"] if found and "id" in found.groupdict() else ""


async def _proxy(row: Endpoint, scope: Scope, receive: Receive) -> ProxyReply | None:
    """Authenticate, find the model, forward; None when the client left meanwhile."""
    fleet: Fleet = scope["litestar_app"].state.fleet
    guard: Guard = scope["litestar_app"].state.guard
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    principal = fleet.keyring.check(headers, AuthScope.API)
    await guard.admit(principal)
    tenancy = (principal.tenancy if principal else DEFAULT_TENANCY).for_request(headers)
    body = await _read_body(receive, fleet.settings.max_body_bytes)
    content_type = headers.get("content-type", "")
    if row.model_from is ModelFrom.RESPONSE_ID:
        target = await target_of(
            row, body, content_type, _path_id(row, scope["path"]), fleet.model_of_response
        )
    else:
        target = body_target(row, body, content_type)
    query = scope.get("query_string", b"")
    call = Call(
        endpoint=row,
        target=scope["path"] + ("?" + query.decode("latin-1") if query else ""),
        model=target.model,
        body=body,
        headers=headers,
        request_id=request_id_of(headers),
        response_id=target.response_id,
        affinity=fleet.affinity.for_request(scope["path"], target.model, target.payload, headers),
        tenancy=tenancy,
    )
    watch = DisconnectWatch(receive, after_s=DISCONNECT_WATCH_AFTER_S)
    try:
        return await fleet.proxy.forward(call, client_gone=lambda: _client_left(receive))
    except asyncio.CancelledError:
        if watch.absorb():
            # The proxy freed the lease and closed the upstream connection on its way out;
            # nobody is left to answer.
            return None
        raise
    finally:
        watch.stop()


def _handler_name(path: str) -> str:
    return "proxied" + re.sub(r"[^a-z0-9]+", "_", path)


async def _reply_of(
    row: Endpoint, scope: Scope, receive: Receive
) -> tuple[ProxyReply, Message] | None:
    """The reply and its start message, or None when the client left. Anything raised here
    comes before the reply starts, so it can still be answered as an error."""
    method: str = scope["method"]  # type: ignore[typeddict-item]  # HTTP only here
    if method != row.method:
        raise MethodNotAllowed(f"{row.path} takes {row.method}, not {method}")
    reply = await _proxy(row, scope, receive)
    return None if reply is None else (reply, _start_message(reply))


async def _serve_raw(row: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    made = await _reply_of(row, scope, receive)
    if made is not None:
        await _send_reply(*made, receive, send)


def _raw_route(path: str, row: Endpoint) -> Any:
    """A raw ASGI handler, for the requests Litestar routes (see ``front``)."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await _serve_raw(row, scope, receive, send)

    endpoint.__name__ = _handler_name(path)
    return asgi(path, name=endpoint.__name__, copy_scope=False, include_in_schema=False)(endpoint)


def _by_id_route(path: str, rows: tuple[Endpoint, ...]) -> Any:
    """A Litestar route for a path naming a stored response. Litestar cannot hand path
    parameters to raw ASGI handlers; these requests are rare enough to pay for a Request."""
    by_method = {row.method: row for row in rows}

    async def endpoint(request: Request[Any, Any, Any]) -> Response[Any]:
        reply = await _proxy(by_method[request.method], request.scope, request.receive)
        if reply is None:
            return Response(b"", status_code=ClientClosedRequest.status_code)
        headers = dict(reply.headers)
        media_type = headers.pop("content-type", headers.pop("Content-Type", None))
        if reply.chunks is None:
            return Response(
                reply.body, status_code=reply.status, headers=headers, media_type=media_type
            )
        return Stream(
            reply.chunks, status_code=reply.status, headers=headers, media_type=media_type
        )

    endpoint.__name__ = _handler_name(path)
    return route(
        path.replace("{response_id}", "{response_id:str}"),
        http_method=[HttpMethod(m) for m in by_method],
        status_code=200,  # the node decides; a DELETE is not a 204 unless it says so
        name=endpoint.__name__,
        include_in_schema=False,
    )(endpoint)


def _handler(path: str, rows: tuple[Endpoint, ...]) -> Any:
    if rows[0].model_from is ModelFrom.RESPONSE_ID:
        return _by_id_route(path, rows)
    [row] = rows
    return _raw_route(path, row)


HANDLERS = [_handler(path, rows) for path, rows in routes().items()]


#: The paths the front serves itself: every proxied path without a parameter.
_FRONT = {path: rows[0] for path, rows in routes().items() if "{" not in path}
_JSON = (b"content-type", b"application/json")


async def _send_error(scope: Scope, send: Send, exc: Exception) -> None:
    status, body, headers = error_reply(scope["method"], scope["path"], exc)  # type: ignore[typeddict-item]
    content = orjson.dumps(body)
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw += [_JSON, (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content, "more_body": False})


def front(app: ASGIApp) -> ASGIApp:
    """Serve the proxied paths before Litestar's routing and middleware see them.

    Litestar's layers (exception middleware, router, route, our credentials middleware)
    cost a few awaits and lookups per request; here the path is one dict lookup and the
    rules are the same: ambiguous credentials get 400, a bad host header 400, an error
    before the reply starts answers in the endpoint's dialect (the app's own
    ``error_reply``), and one after it closes the connection. Anything else (a mounted
    root path, a trailing slash, the paths naming a stored response, every other
    endpoint) goes on to Litestar, which still routes the proxied paths the same way.
    """

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        row = _FRONT.get(scope["path"]) if scope["type"] == ScopeType.HTTP else None
        if row is None or scope.get("root_path"):
            await app(scope, receive, send)
            return
        try:
            problem = ambiguous_credentials(scope["headers"])
            if problem is not None:
                raise problem
            if not _valid_host(scope["headers"]):
                raise InvalidRequest("Invalid host header")
            made = await _reply_of(row, scope, receive)
        except Exception as exc:
            await _send_error(scope, send, exc)
            return
        if made is not None:
            await _send_reply(*made, receive, send)

    return serve


def _valid_host(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Litestar's own check on the ``Host`` header, for the requests it does not route."""
    for name, value in headers:
        if name == b"host":
            return is_valid_host(value)
    return True
