"""What the proxy reports about each request, and where it goes: metrics, the fleet's
recent-decisions list, and (when enabled) one JSON access-log line.

The proxy holds a ``RequestTrace`` per request and calls a handful of cheap hooks; every
hook is O(1) and never awaits anything. A finished request costs a cache lookup of its
(model, node) metric series (resolved once: label caps, label tuples and histogram children),
a few observations into them, and one tuple appended to the decision log, which builds its
entries only when it flushes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, MutableMapping
from time import perf_counter

from llm_router.errors import RouterError
from llm_router.observability.access_log import AccessLog
from llm_router.observability.decisions import DecisionLog, request_fields
from llm_router.observability.history import HistoryRecorder
from llm_router.observability.metrics import OTHER, CounterChild, HistogramChild
from llm_router.observability.router_metrics import RouterMetrics

#: Reported when the client went away before an answer (nginx's convention).
CLIENT_CLOSED = 499
#: Resolved series kept per observer. Past it the cache starts over: the series stay in the
#: registry, only their lookups are redone (label caps make the series few; raw model and
#: node names, the cache's keys, need not be).
MAX_CACHED_SERIES = 4096
#: Outcomes ``leased`` and ``failed_attempt`` already counted.
_COUNTED_ON_THE_WAY = frozenset({"routed", "queued", "failover"})


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


class _Series:
    """The metric children one (model, node) pair's requests land in, resolved once; the
    ones a request may never reach (status codes, first-byte timings) on first use, so a
    pair shows exactly the series it fed."""

    __slots__ = ("_metrics", "_statuses", "_ttfb", "_upstream", "duration", "model", "node")

    def __init__(self, metrics: RouterMetrics, model: str, node: str) -> None:
        self._metrics = metrics
        self.model = model
        self.node = node
        self.duration = metrics.duration.child(model)
        self._statuses: dict[int, CounterChild] = {}
        self._ttfb: HistogramChild | None = None
        self._upstream: HistogramChild | None = None

    def requests(self, status: int) -> CounterChild:
        found = self._statuses.get(status)
        if found is None:
            found = self._statuses[status] = self._metrics.requests.child(
                self.model, self.node, str(status)
            )
        return found

    def first_byte(self) -> tuple[HistogramChild, HistogramChild]:
        if self._ttfb is None or self._upstream is None:
            self._ttfb = self._metrics.ttfb.child(self.model)
            self._upstream = self._metrics.upstream.child(self.model)
        return self._ttfb, self._upstream


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
        self._series: dict[tuple[str, str], _Series] = {}
        self._affinity: dict[str, CounterChild] = {}
        self._routed = metrics.decisions.child("routed")
        self._queued = metrics.decisions.child("queued")
        self._attempts = metrics.attempts.child()
        self._overhead = metrics.overhead.child()

    def _series_of(self, trace: RequestTrace, outcome: str | None) -> _Series:
        node = trace.node
        if outcome == "model_not_found":
            # A model the fleet does not know takes no label slot: junk names sent by one
            # client must not push the fleet's real models into "other". Rare, not cached.
            m = self.metrics
            return _Series(m, OTHER, m.node_label(node) if node else "none")
        key = (trace.model, node)
        found = self._series.get(key)
        if found is None:
            if len(self._series) >= MAX_CACHED_SERIES:
                self._series.clear()
            m = self.metrics
            found = self._series[key] = _Series(
                m, m.model_label(trace.model), m.node_label(node) if node else "none"
            )
        return found

    def _affinity_counter(self, affinity: str) -> CounterChild:
        found = self._affinity.get(affinity)
        if found is None:
            if len(self._affinity) >= MAX_CACHED_SERIES:
                self._affinity.clear()
            outcome, _, cause = affinity.partition(":")
            found = self._affinity[affinity] = self.metrics.affinity.child(outcome, cause or "none")
        return found

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
            self._affinity_counter(affinity).inc()
        if queued_ms is None:
            self._routed.inc()
        else:
            trace.queue_ms += queued_ms
            self._queued.inc()
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
        total_s = perf_counter() - trace.started
        series = self._series_of(trace, outcome)
        outcome = outcome or outcome_of(trace, status, broken=broken)
        if outcome not in _COUNTED_ON_THE_WAY:
            self.metrics.decisions.inc(outcome)
        series.requests(status).inc()
        series.duration.observe(total_s)
        if trace.attempts:
            self._attempts.observe(trace.attempts)
        first_byte_s = trace.first_byte_s
        if first_byte_s is not None:
            ttfb, upstream = series.first_byte()
            ttfb.observe(first_byte_s)
            upstream.observe(trace.upstream_s)
            self._overhead.observe(
                max(0.0, first_byte_s - trace.upstream_s - trace.queue_ms / 1000.0)
            )
        if self.history is not None:
            ttft_s = first_byte_s if trace.stream else None
            self.history.record(series.model, status, broken, total_s, ttft_s)
        if self.decisions is not None:
            self.decisions.record(
                (
                    time.time(),
                    self.replica,
                    trace.request_id,
                    trace.model,
                    trace.node,
                    status,
                    outcome,
                    trace.attempts,
                    trace.affinity,
                    trace.queue_ms,
                    total_s,
                )
            )
        if self.access_log is not None:
            entry = request_fields(
                trace.request_id,
                trace.model,
                trace.node,
                status,
                outcome,
                trace.attempts,
                trace.affinity,
                trace.queue_ms,
                total_s,
            )
            entry["stream"] = trace.stream
            if first_byte_s is not None:
                entry["ttfb_ms"] = round(first_byte_s * 1000, 2)
                entry["upstream_ms"] = round(trace.upstream_s * 1000, 2)
            self.access_log.write(entry)
