"""The node-side OpenAI API: ``/v1/models`` for this backend, the rest proxied to the runtime.

Every endpoint of the router's table (``routing.endpoints``) is a raw-ASGI route here, with
its method (``GET``/``DELETE`` of a stored response too) and body (JSON or multipart):
the body goes to the runtime byte-for-byte and the reply (SSE included) comes back chunk by
chunk as the runtime produces it. A request counts in ``active_requests`` from the moment
it is accepted until its last byte is sent or the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import aiohttp
import orjson
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.response import Response

from llm_router.api.form import form_field
from llm_router.asgi_util import (
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    abort_transport,
    error_json,
    read_body,
    send_error,
    send_json,
)
from llm_router.errors import InvalidRequest
from llm_router.node.node_auth import needs_secret, refuse
from llm_router.node.state import NodeState
from llm_router.observability import tracing
from llm_router.routing.endpoints import Endpoint, ModelFrom, match, routes, serves

log = logging.getLogger("llm_router.node")

#: Every path (pattern) the agent forwards to its runtime: the router's endpoint table.
PROXIED_PATHS = tuple(routes())
MAX_BODY_BYTES = 32 * 1024 * 1024

# Sent on to the runtime. The client's Authorization is for the router, not the runtime.
_FORWARD_REQUEST_HEADERS = frozenset(
    {
        b"content-type",
        b"accept",
        b"x-request-id",
        b"anthropic-version",
        b"anthropic-beta",
        b"traceparent",
        b"tracestate",
    }
)
# Hop-by-hop, or set by our own server.
_DROP_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "date",
        "server",
    }
)


#: Deepest JSON nesting the agent accepts. Runtimes parse the body again, some with
#: recursive parsers (Python's json gives up near 1,000 levels): a body nested deeper is
#: refused here with a 400 rather than crashing the runtime into a 500.
MAX_JSON_DEPTH = 512
#: orjson refuses documents nested deeper than 1,024 containers; inside this many extra
#: arrays, a body hits that limit exactly when it is nested deeper than MAX_JSON_DEPTH.
_DEPTH_PAD = 1024 - MAX_JSON_DEPTH


class NestedTooDeep(ValueError):
    def __init__(self) -> None:
        super().__init__(f"request body is nested deeper than {MAX_JSON_DEPTH} levels")


def parse_json_body(body: bytes) -> Any:
    """The body as JSON (ValueError if it is not), nested at most ``MAX_JSON_DEPTH`` deep."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return orjson.loads(body)  # too few brackets to nest too deep: the common case
    try:
        data = orjson.loads(b"[" * _DEPTH_PAD + body + b"]" * _DEPTH_PAD)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            raise NestedTooDeep from exc
        raise
    for _ in range(_DEPTH_PAD):
        data = data[0]
    return data


def model_of(body: bytes) -> tuple[str | None, str | None]:
    """(model, None) or (None, why the body has no usable model)."""
    try:
        data = parse_json_body(body)
    except NestedTooDeep as exc:
        return None, str(exc)
    except ValueError:
        return None, "request body must be a JSON object"
    if not isinstance(data, dict):
        return None, "request body must be a JSON object"
    model = data.get("model")
    if not isinstance(model, str) or not model:
        return None, "'model' is required and must be a non-empty string"
    return model, None


def _content_type(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"content-type":
            return str(value.decode("latin-1"))
    return ""


def _model_in(endpoint: Endpoint, body: bytes, content_type: str) -> tuple[str | None, str | None]:
    """The model of a JSON body, or of the ``model`` field of a multipart form."""
    if endpoint.model_from is ModelFrom.FORM and content_type.startswith("multipart/form-data"):
        try:
            model = form_field(body, content_type, "model")
        except InvalidRequest as exc:
            return None, exc.message
        return (model, None) if model else (None, "the form has no 'model' field")
    return model_of(body)


class RuntimeProxy:
    """Forwards the OpenAI generation routes to the runtime without buffering."""

    def __init__(
        self,
        runtime_url: str,
        state: NodeState,
        *,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 5.0,
        api_key: str | None = None,
    ) -> None:
        self.runtime_url = runtime_url.rstrip("/")
        self.state = state
        # The runtime's own key replaces the router's credential, which never leaves here.
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
        )
        try:
            yield
        finally:
            await self._session.close()
            self._session = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = match(scope["method"], scope["path"])
        if found is None:
            await send_error(
                send, 405, "method not allowed", "invalid_request_error", "method_not_allowed"
            )
            return
        endpoint = found[0]
        try:
            body = await read_body(receive, MAX_BODY_BYTES)
        except BodyTooLarge:
            await send_error(
                send, 413, "request body too large", "invalid_request_error", "request_too_large"
            )
            return
        except ClientGone:
            return
        if endpoint.model_from is ModelFrom.RESPONSE_ID:
            # No model to check: the runtime knows its own stored responses.
            await self._counted(scope, receive, send, body)
            return
        model, problem = _model_in(endpoint, body, _content_type(scope))
        if model is None:
            await send_error(
                send,
                400,
                problem or "bad body",
                "invalid_request_error",
                "invalid_request",
                "model",
            )
            return
        inventory = self.state.inventory
        if not inventory.is_executable(model):
            why = (
                f"is installed but not executable on this node's {inventory.backend} backend"
                if model in inventory.installed
                else "is not served by this node"
            )
            await send_error(
                send,
                404,
                f"model {model!r} {why}",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
            return
        await self._counted(scope, receive, send, body)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        started = self.state.begin()
        try:
            with tracing.runtime_call(scope):
                await self._forward(scope, receive, send, body)
        finally:
            self.state.end(started)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        gone = asyncio.Event()

        async def watch_client() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch_client())
        relay = asyncio.create_task(self._relay(scope, send, body, gone))
        try:
            await asyncio.wait({watcher, relay}, return_when=asyncio.FIRST_COMPLETED)
            if not relay.done():
                # The client left: stop reading, which also ends the runtime's work.
                relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _relay(self, scope: Scope, send: Send, body: bytes, gone: asyncio.Event) -> None:
        assert self._session is not None, "node API used outside its lifespan"
        query = scope.get("query_string", b"")
        url = self.runtime_url + scope["path"] + ("?" + query.decode("latin-1") if query else "")
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in _FORWARD_REQUEST_HEADERS
        }
        headers.update(self._auth)
        tracing.inject(headers)
        try:
            response = await self._session.request(
                scope["method"], url, data=body or None, headers=headers
            )
        except aiohttp.ClientConnectorError as exc:
            await send_error(
                send,
                502,
                f"runtime unreachable at {self.runtime_url}: {exc.os_error}",
                "upstream_error",
                "runtime_unreachable",
            )
            return
        except TimeoutError:
            await send_error(
                send, 504, "runtime did not answer in time", "timeout_error", "upstream_timeout"
            )
            return
        except aiohttp.ClientError as exc:
            # Connected, then the runtime hung up before a byte: be as transparent as we can.
            log.warning("runtime dropped %s before responding: %s", scope["path"], exc)
            await self._drop(send, gone)
            return
        async with response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        (k.lower(), v)
                        for k, v in response.raw_headers
                        if k.decode("latin-1").lower() not in _DROP_RESPONSE_HEADERS
                    ],
                }
            )
            try:
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("runtime failed mid-response on %s: %s", scope["path"], exc)
                await self._drop(send, gone)
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _drop(send: Send, gone: asyncio.Event) -> None:
        if not abort_transport(send):
            raise ConnectionAbortedError("runtime failed; cutting the client connection")
        # Let the server see the disconnect before we return, or it would answer a 500.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), 2.0)


def models_payload(state: NodeState) -> dict[str, Any]:
    inventory = state.inventory
    return {
        "object": "list",
        "data": [
            {
                "id": model_id,
                "object": "model",
                "created": state.started_at,
                "owned_by": state.machine_name,
            }
            for model_id in inventory.executable
        ],
        "gpu_backend": str(inventory.backend),
    }


class NodeAPI:
    """The node API's ASGI entry point.

    The proxied routes are dispatched here, before Litestar: they need the server's own
    ``send`` (to cut a connection when the runtime dies) and gain nothing from a framework.
    Everything else, lifespan included, is the Litestar app's.
    """

    def __init__(self, app: Litestar, proxy: RuntimeProxy, state: NodeState) -> None:
        self.app = app
        self.proxy = proxy
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if needs_secret(path) and not self.state.credential.admits(scope):
                await refuse(send)
                return
            if serves(path):
                await self.proxy(scope, receive, send)
                return
            if path.startswith("/v1/models/") and scope["method"] == "GET":
                await self._one_model(unquote(path[len("/v1/models/") :]), send)
                return
        await self.app(scope, receive, send)  # type: ignore[arg-type]

    async def _one_model(self, model_id: str, send: Send) -> None:
        for entry in models_payload(self.state)["data"]:
            if entry["id"] == model_id:
                await send_json(send, 200, entry)
                return
        await send_error(
            send,
            404,
            f"model {model_id!r} is not served by this node",
            "invalid_request_error",
            "model_not_found",
            "model",
        )


def create_node_app(state: NodeState, proxy: RuntimeProxy) -> NodeAPI:
    """The node API. ``state`` and ``proxy`` are shared with the agent's heartbeat."""

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "runtime_ready": state.runtime_ready,
            "active_requests": state.active_requests,
        }

    @get("/v1/models", sync_to_thread=False)
    def list_models() -> dict[str, Any]:
        return models_payload(state)

    def not_found(_request: Any, exc: NotFoundException) -> Response[dict[str, Any]]:
        return Response(
            error_json(exc.detail, "invalid_request_error", "not_found"), status_code=404
        )

    app = Litestar(
        route_handlers=[healthz, list_models],
        lifespan=[proxy.lifespan],
        state=State({"node": state}),
        openapi_config=None,
        logging_config=None,
        exception_handlers={NotFoundException: not_found},
    )
    return NodeAPI(app, proxy, state)


__all__ = ["PROXIED_PATHS", "NodeAPI", "RuntimeProxy", "create_node_app", "model_of"]
