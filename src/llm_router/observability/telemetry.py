"""One replica's observability, assembled from its settings: metrics, the request
observer the proxy calls, the shared recent-decisions list and the fleet view.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_router.observability import tracing
from llm_router.observability.access_log import AccessLog, access_logger
from llm_router.observability.decisions import DecisionLog
from llm_router.observability.fleet_view import FleetView, refresh_fleet_gauges
from llm_router.observability.history import HistoryRecorder, HistoryView
from llm_router.observability.observer import Observer
from llm_router.observability.router_metrics import RouterMetrics
from llm_router.observability.tenant_view import LimitedKey, no_limited_keys
from llm_router.observability.worker_metrics import WorkerMetrics, WorkerSlot
from llm_router.settings import RouterSettings
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry


def replica_name(settings: RouterSettings, worker: WorkerSlot | None = None) -> str:
    """How logs and the decision list name this replica; ``serve --workers N`` runs N
    replicas on one host and port, told apart by their worker number."""
    name = f"{socket.gethostname()}:{settings.port}"
    return name if worker is None else f"{name}/w{worker.index}"


def _observer(
    metrics: RouterMetrics,
    decisions: DecisionLog,
    access: AccessLog | None,
    replica: str,
    history: HistoryRecorder,
) -> Observer:
    """With tracing off the proxy's hooks are the plain observer's: no span code runs."""
    tracer = tracing.tracer()
    if tracer is None:
        return Observer(metrics, decisions, access, replica, history)
    from llm_router.observability.request_spans import TracingObserver

    return TracingObserver(metrics, decisions, access, replica, history, tracer=tracer)


@dataclass
class Telemetry:
    metrics: RouterMetrics
    observer: Observer
    decisions: DecisionLog
    view: FleetView
    history: HistoryView
    recorder: HistoryRecorder
    replica: str
    #: With ``serve --workers``: the other workers' series, so one scrape shows them all.
    workers: WorkerMetrics | None = None

    @classmethod
    def build(
        cls,
        settings: RouterSettings,
        redis: Any,
        keys: Keys,
        registry: NodeRegistry,
        metrics: RouterMetrics,
        worker: WorkerSlot | None = None,
        limited_keys: Callable[[], Sequence[LimitedKey]] = no_limited_keys,
    ) -> Telemetry:
        replica = replica_name(settings, worker)
        decisions = DecisionLog(redis, keys.decisions, metrics.decisions_dropped)
        access = AccessLog(access_logger(), replica) if settings.access_log else None
        view = FleetView(
            redis,
            keys,
            registry,
            forget_ms=int(settings.node_forget_s * 1000),
            limited_keys=limited_keys,
        )
        recorder = HistoryRecorder(redis, keys, view, metrics.history_dropped)
        return cls(
            metrics=metrics,
            observer=_observer(metrics, decisions, access, replica, recorder),
            decisions=decisions,
            view=view,
            history=HistoryView(redis, keys, view),
            recorder=recorder,
            replica=replica,
            workers=WorkerMetrics(worker, metrics.registry) if worker else None,
        )

    def start(self) -> None:
        self.decisions.start()
        self.recorder.start()
        if self.workers is not None:
            self.workers.start()

    async def stop(self) -> None:
        await self.decisions.stop()
        await self.recorder.stop()
        if self.workers is not None:
            await self.workers.stop()
        tracing.flush()

    async def render(
        self,
        *,
        leases_held: int,
        queue_waiters: int,
        tenant_waiters: Mapping[tuple[str, int], int] | None = None,
    ) -> str:
        """The Prometheus exposition of this replica, fleet-wide gauges freshly read."""
        self.metrics.leases_held.set(leases_held)
        self.metrics.queue_waiters.set(queue_waiters)
        by_label: dict[tuple[str, str], float] = {}
        for (tenant, band), count in (tenant_waiters or {}).items():
            label = (self.metrics.tenant_label(tenant), str(band))
            by_label[label] = by_label.get(label, 0) + count
        self.metrics.tenant_queue_waiters.replace(by_label.items())
        await refresh_fleet_gauges(self.view, self.metrics)
        if self.workers is not None:
            return self.workers.render()
        return self.metrics.registry.render()
