"""The router's own probes: liveness, readiness, metrics (and the dashboard's routes)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.response import Response as PlainResponse

from llm_router.api import dashboard
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
    elif (stale := request.app.state.guard.refresher.stale_for_s()) is not None:
        # Still ready (a revocation delayed is not an outage), but an operator must know.
        age = "since start-up" if stale == float("inf") else f"for {stale:.0f} s"
        body["warning"] = f"managed keys not refreshed {age}: revocations are not enforced"
    return Response(body)


@get("/metrics", media_type="text/plain; version=0.0.4")
async def metrics(request: Request[Any, Any, Any]) -> PlainResponse[str]:
    """This replica's counters and histograms plus fleet-wide gauges read from Redis.

    A Redis outage does not fail the scrape: ``llm_router_fleet_state_up`` drops to 0 and
    the replica's own series are still exported.
    """
    fleet = fleet_of(request)
    text = await fleet.telemetry.render(
        leases_held=fleet.dispatcher.held,
        queue_waiters=fleet.events.waiting(),
        tenant_waiters=fleet.events.waiting_by_tenant(),
    )
    return PlainResponse(text, media_type="text/plain; version=0.0.4")


HANDLERS = [healthz, readyz, metrics, *dashboard.HANDLERS]
