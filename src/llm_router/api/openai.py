"""The OpenAI-compatible surface: model listing and the proxied inference endpoints.

Handlers stay thin: authenticate, read ``model`` from the body, hand over to the proxy.
The body itself is forwarded as received (never re-serialised).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream

from llm_router.api.nodes import fleet_of
from llm_router.auth import Scope
from llm_router.errors import ClientClosedRequest, InvalidRequest, ModelNotFound
from llm_router.protocol import validate_model_id
from llm_router.security.guard import Guard
from llm_router.state.scripts import ModelEntry

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def model_of(body: bytes) -> str:
    if not body:
        raise InvalidRequest("Request body is empty; expected a JSON object with 'model'")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("Request body must be a JSON object")
    model = payload.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", param="model")
    try:
        return validate_model_id(model)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid 'model': {exc}", param="model") from exc


def request_id_of(request: Request[Any, Any, Any]) -> str:
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID_RE.match(given):
        return given
    return uuid.uuid4().hex


#: A request still running after this long starts watching for its client's disconnect.
#: Short requests never pay for the watcher; long ones (most generations) free their node
#: slot as soon as nobody is left to read the answer.
DISCONNECT_WATCH_AFTER_S = 0.25


async def _forward(request: Request[Any, Any, Any], path: str) -> Response[bytes] | Stream:
    fleet = fleet_of(request)
    principal = fleet.keyring.check(request.headers, Scope.API)
    guard: Guard = request.app.state.guard
    await guard.admit(principal)
    body = await request.body()
    model = model_of(body)
    with _cancel_when_client_leaves(request) as gone:
        try:
            return await fleet.proxy.forward(
                path=path,
                model=model,
                body=body,
                headers=request.headers,
                request_id=request_id_of(request),
                client_gone=lambda: _disconnected(request),
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if gone.is_set() and task is not None and task.uncancel() == 0:
                # Our own cancellation: the proxy has freed the lease and closed the
                # upstream connection on its way out; end the request quietly.
                raise ClientClosedRequest("the client disconnected") from None
            raise


@contextlib.contextmanager
def _cancel_when_client_leaves(request: Request[Any, Any, Any]) -> Iterator[asyncio.Event]:
    """Cancel the current task if the client disconnects (watched after a short delay)."""
    task = asyncio.current_task()
    gone = asyncio.Event()
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        await _disconnected(request)
        gone.set()
        if task is not None:
            task.cancel()

    def start() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    handle = asyncio.get_running_loop().call_later(DISCONNECT_WATCH_AFTER_S, start)
    try:
        yield gone
    finally:
        handle.cancel()
        if watcher is not None:
            watcher.cancel()


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    """Return once the client has gone. Only called after the body was read in full, when
    the server's next message can only be the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@post("/v1/chat/completions")
async def chat_completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return await _forward(request, "/v1/chat/completions")


@post("/v1/completions")
async def completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return await _forward(request, "/v1/completions")


@post("/v1/embeddings")
async def embeddings(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return await _forward(request, "/v1/embeddings")


def _model_object(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "object": "model",
        "created": entry.created,
        "owned_by": "llm-router",
        "node_count": entry.node_count,
        "backends": entry.backends,
    }


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> dict[str, Any]:
    fleet = fleet_of(request)
    fleet.keyring.check(request.headers, Scope.API)
    entries = await fleet.registry.list_models()
    return {"object": "list", "data": [_model_object(e) for e in entries]}


@get("/v1/models/{model_id:path}")
async def get_model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> dict[str, Any]:
    fleet = fleet_of(request)
    fleet.keyring.check(request.headers, Scope.API)
    wanted = model_id.lstrip("/")
    for entry in await fleet.registry.list_models():
        if entry.id == wanted:
            return _model_object(entry)
    raise ModelNotFound(f"The model '{wanted}' does not exist", param="model")


HANDLERS = [chat_completions, completions, embeddings, list_models, get_model]
