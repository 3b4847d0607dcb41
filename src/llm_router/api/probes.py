"""The router's own probes: liveness, readiness, metrics."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.response import Response as PlainResponse

from llm_router.api.nodes import fleet_of
from llm_router.errors import ShuttingDown, StateStoreUnavailable
from llm_router.state.scripts import STORE_DOWN_ERRORS


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    fleet = fleet_of(request)
    if fleet.shutting_down:
        raise ShuttingDown("this router replica is shutting down")
    try:
        await fleet.store.redis.ping()
    except STORE_DOWN_ERRORS as exc:
        raise StateStoreUnavailable(f"state store unavailable: {exc}") from exc
    body: dict[str, Any] = {"status": "ready", "store": fleet.store.description}
    if fleet.settings.auth_disabled:
        body["warning"] = "authentication is disabled"
    return Response(body)


@get("/metrics", media_type="text/plain; version=0.0.4")
async def metrics(request: Request[Any, Any, Any]) -> PlainResponse[str]:
    fleet = fleet_of(request)
    lines = [
        "# HELP llm_router_leases_held Leases this replica holds right now.",
        "# TYPE llm_router_leases_held gauge",
        f"llm_router_leases_held {fleet.dispatcher.held}",
        "# HELP llm_router_queue_waiters Requests this replica has waiting in the queue.",
        "# TYPE llm_router_queue_waiters gauge",
        f"llm_router_queue_waiters {fleet.events.waiting()}",
    ]
    return PlainResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


HANDLERS = [healthz, readyz, metrics]
