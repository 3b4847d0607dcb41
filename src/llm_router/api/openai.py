"""The OpenAI model listing. The proxied endpoints are built in ``api.proxied``."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.params import FromPath

from llm_router.api.nodes import fleet_of
from llm_router.auth import Scope as AuthScope
from llm_router.errors import ModelNotFound
from llm_router.state.scripts import ModelEntry


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
    fleet.keyring.check(request.headers, AuthScope.API)
    entries = await fleet.registry.list_models()
    return {"object": "list", "data": [_model_object(e) for e in entries]}


@get("/v1/models/{model_id:path}")
async def get_model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> dict[str, Any]:
    fleet = fleet_of(request)
    fleet.keyring.check(request.headers, AuthScope.API)
    wanted = model_id.lstrip("/")
    for entry in await fleet.registry.list_models():
        if entry.id == wanted:
            return _model_object(entry)
    raise ModelNotFound(f"The model '{wanted}' does not exist", param="model")


HANDLERS = [list_models, get_model]
