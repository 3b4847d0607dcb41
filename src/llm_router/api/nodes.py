"""The node protocol (v0): registration, heartbeats, and the admin view of nodes."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.params import FromPath

from llm_router.api.body import validate
from llm_router.api.bounded_fetch import FetchFailed, get_json
from llm_router.auth import Scope
from llm_router.errors import (
    AuthError,
    Forbidden,
    InvalidRequest,
    NodeModelsFetchFailed,
    NodeNotFound,
)
from llm_router.fleet import Fleet
from llm_router.protocol import MAX_MODELS_PER_NODE, HeartbeatRequest, RegisterRequest
from llm_router.protocol import validate_model_id as check_model_id
from llm_router.state.registry import resolve_backend


def fleet_of(request: Request[Any, Any, Any]) -> Fleet:
    fleet: Fleet = request.app.state.fleet
    return fleet


async def _fetch_node_models(fleet: Fleet, req: RegisterRequest) -> tuple[list[str], str | None]:
    """Ask the node which models it serves (for agents that do not say at registration)."""
    host = str(req.ip_address)
    host = f"[{host}]" if ":" in host else host
    url = f"{req.scheme}://{host}:{req.api_port}/v1/models"
    settings = fleet.settings
    try:
        payload = await get_json(
            fleet.control_http,
            url,
            max_bytes=settings.model_fetch_max_bytes,
            timeout_s=settings.model_fetch_timeout_s,
        )
    except FetchFailed as exc:
        raise NodeModelsFetchFailed(f"Could not list the node's models at {url}: {exc}") from exc
    entries = payload.get("data", []) if isinstance(payload, dict) else []
    if not isinstance(entries, list):
        entries = []
    models = [e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
    try:
        for model in models:
            check_model_id(model)
    except ValueError as exc:
        raise NodeModelsFetchFailed(f"The node at {url} listed an invalid model id: {exc}") from exc
    if len(models) > MAX_MODELS_PER_NODE:
        raise NodeModelsFetchFailed(f"The node at {url} listed more than {MAX_MODELS_PER_NODE}")
    backend = payload.get("gpu_backend") if isinstance(payload, dict) else None
    return models, backend if isinstance(backend, str) else None


def _bound_models(limit: int, **lists: list[str] | None) -> None:
    """Refuse a node that advertises more models than one node may (400 naming the list)."""
    for name, models in lists.items():
        if models is not None and len(models) > limit:
            raise InvalidRequest(
                f"Invalid '{name}': a node may advertise at most {limit} models", param=name
            )


@post("/v0/nodes", status_code=201)
async def register_node(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    fleet = fleet_of(request)
    principal = fleet.keyring.check(request.headers, Scope.NODE)
    req = validate(RegisterRequest, await request.body())
    limit = fleet.settings.max_models_per_node
    _bound_models(limit, executable_models=req.executable_models, models=req.models)
    if fleet.settings.require_gpu and (req.gpu_available is False or not req.device_names()):
        raise Forbidden("This router only accepts nodes with a GPU (require_gpu is set)")
    reported_backend = None
    executable = req.executable_models
    if executable is None:
        executable, reported_backend = await _fetch_node_models(fleet, req)
    _bound_models(limit, executable_models=executable)
    registration = await fleet.registry.register(
        req,
        executable_models=executable,
        gpu_backend=resolve_backend(req, reported_backend),
        # Admin keys (and open scopes) are the operator's own: only node keys are bounded.
        key_id=principal.key_id if principal and principal.scope is Scope.NODE else "",
        max_identities=fleet.settings.max_identities_per_node_key,
    )
    return Response(
        {
            "node_id": registration.node_id,
            "status": "registered" if registration.created else "updated",
            "node_api_port": req.api_port,
            "node_token": registration.token,
            "node_secret": registration.secret,
            "heartbeat_interval_s": fleet.settings.heartbeat_interval_s,
        },
        status_code=201 if registration.created else 200,
    )


@post("/v0/health", status_code=200)
async def heartbeat(request: Request[Any, Any, Any]) -> dict[str, Any]:
    fleet = fleet_of(request)
    token = request.headers.get("x-node-token")
    if not token:
        raise AuthError("Missing X-Node-Token header", param="X-Node-Token")
    beat = validate(HeartbeatRequest, await request.body())
    _bound_models(
        fleet.settings.max_models_per_node,
        executable_models=beat.executable_models,
        models=beat.models,
        loaded_models=beat.loaded_models,
    )
    outcome = await fleet.registry.heartbeat(beat, token)
    if outcome == "not_found":
        raise NodeNotFound(f"Node '{beat.node_id}' is not registered; register again")
    if outcome == "unauthorized":
        raise AuthError("X-Node-Token does not belong to this node", param="X-Node-Token")
    return {"status": "ok", "heartbeat_interval_s": fleet.settings.heartbeat_interval_s}


@get("/v0/nodes")
async def list_nodes(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    fleet = fleet_of(request)
    fleet.keyring.check(request.headers, Scope.ADMIN)
    return await fleet.registry.list_nodes()


def _node_id(node_id: str) -> str:
    if not node_id or len(node_id) > 64:
        raise InvalidRequest("node id must be 1-64 characters", param="node_id")
    return node_id


@get("/v0/nodes/{node_id:str}")
async def get_node(request: Request[Any, Any, Any], node_id: FromPath[str]) -> dict[str, Any]:
    fleet = fleet_of(request)
    fleet.keyring.check(request.headers, Scope.ADMIN)
    record = await fleet.registry.get_node(_node_id(node_id))
    if record is None:
        raise NodeNotFound(f"Node '{node_id}' not found")
    return record


@delete("/v0/nodes/{node_id:str}", status_code=200)
async def delete_node(request: Request[Any, Any, Any], node_id: FromPath[str]) -> dict[str, Any]:
    fleet = fleet_of(request)
    token = request.headers.get("x-node-token")
    if token:
        outcome = await fleet.registry.deregister(_node_id(node_id), token)
        if outcome == "unauthorized":
            raise Forbidden("A node may only remove itself")
    else:
        fleet.keyring.check(request.headers, Scope.ADMIN)
        outcome = await fleet.registry.deregister(_node_id(node_id))
    if outcome == "not_found":
        raise NodeNotFound(f"Node '{node_id}' not found")
    return {"node_id": node_id, "status": "removed"}


async def _set_drain(
    request: Request[Any, Any, Any], node_id: str, draining: bool
) -> dict[str, Any]:
    fleet = fleet_of(request)
    fleet.keyring.check(request.headers, Scope.ADMIN)
    status = "draining" if draining else "online"
    if await fleet.registry.drain(_node_id(node_id), draining=draining):
        return {"node_id": node_id, "status": status}
    # A drain is kept per identity: "machine_name:runtime_port" names one with no record now
    # (before it registers, or after it was removed).
    if ":" in node_id and await fleet.registry.drain_identity(node_id, draining=draining):
        return {"identity": node_id, "status": status}
    raise NodeNotFound(f"Node '{node_id}' not found")


@post("/v0/nodes/{node_id:str}/drain", status_code=200)
async def drain_node(request: Request[Any, Any, Any], node_id: FromPath[str]) -> dict[str, Any]:
    return await _set_drain(request, node_id, True)


@post("/v0/nodes/{node_id:str}/undrain", status_code=200)
async def undrain_node(request: Request[Any, Any, Any], node_id: FromPath[str]) -> dict[str, Any]:
    return await _set_drain(request, node_id, False)


HANDLERS = [register_node, heartbeat, list_nodes, get_node, delete_node, drain_node, undrain_node]
