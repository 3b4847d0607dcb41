"""The whole fleet as read from Redis: nodes, models, queues. Shared by ``/metrics`` (the
fleet-wide gauges) and the dashboard, so every replica reports the same thing.

Reading every node record costs one pipelined round trip per view, so a view is cached for
``ttl_s`` and concurrent readers share one read: many dashboards and scrapers hitting a
replica still cost Redis at most one read per second.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_router.errors import StateStoreUnavailable
from llm_router.observability.metrics import OTHER
from llm_router.observability.router_metrics import RouterMetrics
from llm_router.observability.shared_read import SharedRead
from llm_router.observability.tenant_view import (
    LimitedKey,
    TenantState,
    no_limited_keys,
    read_tenants,
)
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry
from llm_router.state.scripts import STORE_DOWN_ERRORS

#: Node fields the dashboard shows; the rest of a record (tokens never included) stays out.
_NODE_FIELDS = (
    "id",
    "machine_name",
    "ip_address",
    "runtime_port",
    "node_api_port",
    "gpu_backend",
    "gpu_model",
    "gpu_count",
    "status",
    "in_flight",
    "max_concurrency",
    "last_seen",
    "executable_models",
    "models",
    "excluded_models",
    "cpu_usage",
    "gpu_usage",
    "average_response_time_ms",
    "runtime_version",
    "runtime_kind",
    "runtime_status",
    "runtime_load",
    "loaded_models",
    "max_concurrency_source",
)

STATE_DOWN: tuple[type[BaseException], ...] = (*STORE_DOWN_ERRORS, StateStoreUnavailable)


@dataclass
class FleetSnapshot:
    taken_at: float
    nodes: list[dict[str, Any]]
    models: list[dict[str, Any]]
    queue_depth: dict[str, int] = field(default_factory=dict)
    #: Per tenant: requests in flight on keys with a fleet-wide limit (used / limit).
    tenants_in_flight: list[dict[str, Any]] = field(default_factory=list)


class FleetView:
    def __init__(
        self,
        redis: Any,
        keys: Keys,
        registry: NodeRegistry,
        *,
        forget_ms: int,
        ttl_s: float = 1.0,
        limited_keys: Callable[[], Sequence[LimitedKey]] = no_limited_keys,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._registry = registry
        self._forget_ms = forget_ms
        #: The keys with a max_in_flight, from this replica's snapshot of the managed keys.
        self._limited_keys = limited_keys
        self._shared = SharedRead(self._read, ttl_s)

    async def snapshot(self) -> FleetSnapshot:
        return await self._shared.get()

    def invalidate(self) -> None:
        self._shared.invalidate()

    async def _read(self) -> FleetSnapshot:
        records = await self._registry.list_nodes()
        seconds, micros = await self._redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        known_raw = await self._redis.zrangebyscore(
            self._keys.models_known, now_ms - self._forget_ms, "+inf"
        )
        known = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in known_raw)
        pipe = self._redis.pipeline(transaction=False)
        for model in known:
            pipe.zcount(self._keys.queue_alive(model), now_ms + 1, "+inf")
        depths = [int(d) for d in await pipe.execute()] if known else []
        queue_depth = dict(zip(known, depths, strict=True))
        tenants: TenantState = await read_tenants(
            self._redis, self._keys, queue_depth, self._limited_keys(), now_ms
        )

        nodes = [{k: r.get(k) for k in _NODE_FIELDS} for r in records]
        nodes.sort(key=lambda n: (str(n["machine_name"]), int(n["runtime_port"] or 0)))
        by_model: dict[str, list[dict[str, Any]]] = {m: [] for m in known}
        for node in nodes:
            for model in node.get("executable_models") or []:
                by_model.setdefault(model, []).append(node)
        models = []
        for model in sorted(by_model):
            serving = by_model[model]
            online = [n for n in serving if n["status"] == "online"]
            models.append(
                {
                    "id": model,
                    "nodes": [
                        {"id": n["id"], "machine_name": n["machine_name"], "status": n["status"]}
                        for n in serving
                    ],
                    "online_nodes": len(online),
                    "backends": sorted({str(n["gpu_backend"]) for n in online}),
                    "queue_depth": queue_depth.get(model, 0),
                    "queue_tenants": tenants.queues.get(model, []),
                }
            )
        return FleetSnapshot(
            taken_at=now_ms / 1000.0,
            nodes=nodes,
            models=models,
            queue_depth=queue_depth,
            tenants_in_flight=tenants.in_flight,
        )


def _top(samples: dict[str, float], limit: int, rank: dict[str, float]) -> dict[str, float]:
    """Keep the ``limit`` highest-ranked labels; fold the rest into ``other`` (summed)."""
    if len(samples) <= limit:
        return samples
    ordered = sorted(samples, key=lambda k: (-rank.get(k, 0.0), k))
    kept = {k: samples[k] for k in ordered[:limit]}
    kept[OTHER] = sum(samples[k] for k in ordered[limit:])
    return kept


async def refresh_fleet_gauges(view: FleetView, metrics: RouterMetrics) -> None:
    """Recompute the fleet-wide gauges from Redis; on failure, report the state as down."""
    try:
        snap = await view.snapshot()
    except STATE_DOWN:
        metrics.fleet_up.set(0)
        return
    except Exception:
        metrics.fleet_up.set(0)
        raise
    metrics.fleet_up.set(1)
    limit = metrics.node_label.limit
    by_status = Tally((str(n["status"]), str(n["gpu_backend"])) for n in snap.nodes)
    metrics.fleet_nodes.replace(((s, b), float(c)) for (s, b), c in by_status.items())

    ids = [str(n["id"]) for n in snap.nodes]
    leases = {str(n["id"]): float(n["in_flight"] or 0) for n in snap.nodes}
    # Busiest nodes keep their own series; idle tails fold into "other".
    rank = {i: leases[i] for i in ids}
    up = {str(n["id"]): 1.0 if n["status"] == "online" else 0.0 for n in snap.nodes}
    capacity = {str(n["id"]): float(n["max_concurrency"] or 0) for n in snap.nodes}
    age = {
        str(n["id"]): max(0.0, snap.taken_at - float(n["last_seen"]))
        for n in snap.nodes
        if n.get("last_seen")
    }
    kept = set(_top(leases, limit, rank)) - {OTHER}
    metrics.fleet_node_up.replace(((k,), v) for k, v in _top(up, limit, rank).items())
    metrics.fleet_node_leases.replace(((k,), v) for k, v in _top(leases, limit, rank).items())
    metrics.fleet_node_capacity.replace(((k,), v) for k, v in _top(capacity, limit, rank).items())
    metrics.fleet_node_heartbeat_age.replace(((k,), age[k]) for k in kept if k in age)
    metrics.fleet_node_info.replace(
        (
            (str(n["id"]), str(n["machine_name"]), str(n["gpu_backend"]), str(n["status"])),
            1.0,
        )
        for n in snap.nodes
        if str(n["id"]) in kept
    )
    depth = {m: float(d) for m, d in snap.queue_depth.items()}
    model_limit = metrics.model_label.limit
    metrics.fleet_queue_depth.replace(((k,), v) for k, v in _top(depth, model_limit, depth).items())
    metrics.fleet_models.set(sum(1 for m in snap.models if m["online_nodes"] > 0))
