"""What the proxy reports about each request, and where it goes: metrics, the fleet's
recent-decisions list, and (when enabled) one JSON access-log line.

The proxy holds a ``RequestTrace`` per request and calls a handful of cheap hooks; every
hook is O(1) (a few dict updates and a deque append) and never awaits anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, MutableMapping
from time import perf_counter
from typing import Any

from llm_router.errors import RouterError
from llm_router.observability.access_log import AccessLog
from llm_router.observability.decisions import DecisionLog
from llm_router.observability.history import HistoryRecorder
from llm_router.observability.metrics import OTHER
from llm_router.observability.router_metrics import RouterMetrics

#: Reported when the client went away before an answer (nginx's convention).
CLIENT_CLOSED = 499


class RequestTrace:
    """Timings and routing facts of one proxied request."""

    __slots__ = (
        "_sent",
        "affinity",
        "attempts",
        "first_byte_s",
        "model",
        "node",
        "queue_ms",
        "request_id",
        "started",
        "stream",
        "upstream_s",
    )

    def __init__(self, model: str, request_id: str) -> None:
        self.model = model
        self.request_id = request_id
        self.started = perf_counter()
        self.node = ""
        self.affinity = ""
        self.attempts = 0
        self.queue_ms = 0.0
        self.upstream_s = 0.0
        self.first_byte_s: float | None = None
        self.stream = False
        self._sent: float | None = None

    def sending(self) -> None:
        """The request is about to go to the node."""
        self._sent = perf_counter()

    def answered(self, *, stream: bool = False) -> None:
        """The node's first byte (or whole body, when not streaming) is here."""
        now = perf_counter()
        self._stop_upstream(now)
        self.first_byte_s = now - self.started
        self.stream = stream

    def _stop_upstream(self, now: float) -> None:
        if self._sent is not None:
            self.upstream_s += now - self._sent
            self._sent = None


def outcome_of(trace: RequestTrace, status: int, *, broken: bool) -> str:
    """The outcome of a request the proxy answered (errors name their own)."""
    if broken:
        return "stream_broken"
    if status == 429:
        return "node_busy"
    if trace.attempts > 1:
        return "failover"
    return "queued" if trace.queue_ms else "routed"


class Observer:
    def __init__(
        self,
        metrics: RouterMetrics,
        decisions: DecisionLog | None = None,
        access_log: AccessLog | None = None,
        replica: str = "",
        history: HistoryRecorder | None = None,
    ) -> None:
        self.metrics = metrics
        self.decisions = decisions
        self.access_log = access_log
        self.replica = replica
        self.history = history

    # --- hooks called by the proxy ----------------------------------------------------------

    def begin(
        self, model: str, request_id: str, headers: Mapping[str, str] | None = None
    ) -> RequestTrace:
        """``headers`` are the client's (a tracing observer continues its ``traceparent``)."""
        return RequestTrace(model, request_id)

    def propagate(self, trace: RequestTrace, headers: MutableMapping[str, str]) -> None:
        """Before an attempt: add what the node should receive to continue the request's
        trace (nothing unless tracing is on)."""

    def leased(
        self,
        trace: RequestTrace,
        node_id: str,
        queued_ms: float | None,
        affinity: str = "",
        tenant_band: tuple[str, int] = ("", 0),
    ) -> None:
        trace.attempts += 1
        trace.node = node_id
        trace.affinity = affinity
        if affinity:
            outcome, _, cause = affinity.partition(":")
            self.metrics.affinity.inc(outcome, cause or "none")
        if queued_ms is None:
            self.metrics.decisions.inc("routed")
        else:
            trace.queue_ms += queued_ms
            self.metrics.decisions.inc("queued")
            self.metrics.queue_wait.observe(
                queued_ms / 1000.0, self.metrics.model_label(trace.model)
            )
            tenant, band = tenant_band
            self.metrics.tenant_queue_wait.observe(
                queued_ms / 1000.0, self.metrics.tenant_label(tenant), str(band)
            )

    def failed_attempt(self, trace: RequestTrace, *, excluded: bool) -> None:
        trace._stop_upstream(perf_counter())
        self.metrics.decisions.inc("failover")
        if excluded:
            self.metrics.decisions.inc("excluded")

    def failed(self, trace: RequestTrace, exc: BaseException) -> None:
        if isinstance(exc, RouterError):
            self.finish(trace, exc.status_code, outcome=exc.code)
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.finish(trace, CLIENT_CLOSED, outcome="client_closed")
        else:
            self.finish(trace, 500, outcome="internal_error")

    def finish(
        self, trace: RequestTrace, status: int, *, outcome: str | None = None, broken: bool = False
    ) -> None:
        m = self.metrics
        now = perf_counter()
        total_s = now - trace.started
        # A model the fleet does not know takes no label slot: junk names sent by one client
        # must not push the fleet's real models into "other".
        model = OTHER if outcome == "model_not_found" else m.model_label(trace.model)
        node = m.node_label(trace.node) if trace.node else "none"
        outcome = outcome or outcome_of(trace, status, broken=broken)
        if outcome not in ("routed", "queued", "failover"):
            m.decisions.inc(outcome)
        m.requests.inc(model, node, str(status))
        m.duration.observe(total_s, model)
        if trace.attempts:
            m.attempts.observe(trace.attempts)
        if trace.first_byte_s is not None:
            m.ttfb.observe(trace.first_byte_s, model)
            m.upstream.observe(trace.upstream_s, model)
            m.overhead.observe(
                max(0.0, trace.first_byte_s - trace.upstream_s - trace.queue_ms / 1000.0)
            )
        if self.history is not None:
            ttft_s = trace.first_byte_s if trace.stream else None
            self.history.record(model, status, broken, total_s, ttft_s)
        if self.decisions is None and self.access_log is None:
            return
        entry: dict[str, Any] = {
            "request_id": trace.request_id,
            "model": trace.model,
            "node": trace.node or None,
            "status": status,
            "outcome": outcome,
            "attempts": trace.attempts,
            "reason": f"affinity:{trace.affinity}" if trace.affinity else "least_loaded",
            "queue_wait_ms": round(trace.queue_ms, 1),
            "duration_ms": round(total_s * 1000, 2),
        }
        if self.decisions is not None:
            self.decisions.record({"ts": round(time.time(), 3), "replica": self.replica, **entry})
        if self.access_log is not None:
            entry["stream"] = trace.stream
            if trace.first_byte_s is not None:
                entry["ttfb_ms"] = round(trace.first_byte_s * 1000, 2)
                entry["upstream_ms"] = round(trace.upstream_s * 1000, 2)
            self.access_log.write(entry)
