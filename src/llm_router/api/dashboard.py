"""The fleet dashboard: a static page (``/dashboard``) polling one admin-scoped JSON view.

The page, its script and stylesheet carry no fleet data, so they are served without a key;
the page asks for an admin key when ``/dashboard/api/state`` answers 401. The state comes
from Redis (nodes, models, queues, the shared recent-decisions list), so every replica
shows the same fleet.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath

from llm_router.api.nodes import fleet_of
from llm_router.auth import Scope
from llm_router.errors import NotFound, StateStoreUnavailable
from llm_router.state.scripts import STORE_DOWN_ERRORS

RECENT_DECISIONS = 50

_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_PAGE_HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


@cache
def _asset(name: str) -> bytes:
    # Immutable package data: read once per process.
    return (resources.files("llm_router.api") / "dashboard" / name).read_bytes()


@get("/dashboard", include_in_schema=False)
async def dashboard_page() -> Response[bytes]:
    return Response(
        _asset("index.html"), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS
    )


@get("/dashboard/static/{name:str}", include_in_schema=False)
async def dashboard_asset(name: FromPath[str]) -> Response[bytes]:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard asset named '{name}'")
    return Response(_asset(name), media_type=media_type, headers=_PAGE_HEADERS)


@get("/dashboard/api/state")
async def dashboard_state(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Nodes, models with their queues (by band and tenant), each tenant's requests in
    flight against its keys' limits, the fleet's recent routing decisions, and the last 15
    minutes of traffic, latency, queue depth and node load (identical on every replica)."""
    fleet = fleet_of(request)
    fleet.keyring.check(request.headers, Scope.ADMIN)
    telemetry = fleet.telemetry
    try:
        snap = await telemetry.view.snapshot()
        decisions = await telemetry.decisions.recent(RECENT_DECISIONS)
        history = await telemetry.history.series()
    except STORE_DOWN_ERRORS as exc:
        raise StateStoreUnavailable(f"state store unavailable: {exc}") from exc
    body = {
        "replica": telemetry.replica,
        "store": fleet.store.description,
        "generated_at": snap.taken_at,
        "nodes": snap.nodes,
        "models": snap.models,
        "tenants_in_flight": snap.tenants_in_flight,
        "decisions": decisions,
        "history": history,
    }
    return Response(body, headers={"cache-control": "no-store"})


HANDLERS = [dashboard_page, dashboard_asset, dashboard_state]
