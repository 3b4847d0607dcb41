"""Spans for proxied requests, built from the proxy's observer hooks (tracing on only).

One span per request (kind server, continuing the client's ``traceparent``), with children
for each lease acquisition (and the queue wait inside it) and each upstream attempt. The
node is sent the attempt's context, so the agent's span hangs below the attempt that
reached it. Timestamps come from the hooks themselves: the proxy does not know spans exist.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from time import time_ns
from typing import Any

from opentelemetry import trace as otel
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from llm_router.observability.observer import Observer, RequestTrace, outcome_of

_NS_PER_MS = 1_000_000


class SpannedRequest(RequestTrace):
    __slots__ = ("acquire_from_ns", "attempt_span", "span")

    def __init__(self, model: str, request_id: str, span: Span) -> None:
        super().__init__(model, request_id)
        self.span = span
        self.attempt_span: Span | None = None
        self.acquire_from_ns = time_ns()


class TracingObserver(Observer):
    def __init__(self, *args: Any, tracer: Tracer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tracer = tracer

    def begin(
        self, model: str, request_id: str, headers: Mapping[str, str] | None = None
    ) -> RequestTrace:
        span = self._tracer.start_span(
            "llm-router request",
            context=extract(headers) if headers else None,
            kind=SpanKind.SERVER,
            attributes={"gen_ai.request.model": model, "llm_router.request_id": request_id},
        )
        return SpannedRequest(model, request_id, span)

    def leased(
        self,
        trace: RequestTrace,
        node_id: str,
        queued_ms: float | None,
        affinity: str = "",
        tenant_band: tuple[str, int] = ("", 0),
    ) -> None:
        super().leased(trace, node_id, queued_ms, affinity, tenant_band)
        assert isinstance(trace, SpannedRequest)
        now = time_ns()
        parent = otel.set_span_in_context(trace.span)
        acquire = self._tracer.start_span(
            "acquire", context=parent, start_time=trace.acquire_from_ns
        )
        acquire.set_attribute("llm_router.node", node_id)
        if affinity:
            acquire.set_attribute("llm_router.affinity", affinity)
        if queued_ms is not None:
            waited_from = max(trace.acquire_from_ns, now - int(queued_ms * _NS_PER_MS))
            self._tracer.start_span(
                "queue wait", context=otel.set_span_in_context(acquire), start_time=waited_from
            ).end(end_time=now)
        acquire.end(end_time=now)
        trace.attempt_span = self._tracer.start_span(
            "upstream attempt",
            context=parent,
            kind=SpanKind.CLIENT,
            start_time=now,
            attributes={"llm_router.node": node_id, "llm_router.attempt": trace.attempts},
        )

    def propagate(self, trace: RequestTrace, headers: MutableMapping[str, str]) -> None:
        assert isinstance(trace, SpannedRequest)
        if trace.attempt_span is not None:
            inject(headers, context=otel.set_span_in_context(trace.attempt_span))

    def failed_attempt(self, trace: RequestTrace, *, excluded: bool) -> None:
        super().failed_attempt(trace, excluded=excluded)
        assert isinstance(trace, SpannedRequest)
        if trace.attempt_span is not None:
            trace.attempt_span.set_attribute("llm_router.excluded", excluded)
            trace.attempt_span.set_status(Status(StatusCode.ERROR, "attempt failed"))
            trace.attempt_span.end()
            trace.attempt_span = None
        trace.acquire_from_ns = time_ns()

    def finish(
        self, trace: RequestTrace, status: int, *, outcome: str | None = None, broken: bool = False
    ) -> None:
        outcome = outcome or outcome_of(trace, status, broken=broken)
        super().finish(trace, status, outcome=outcome, broken=broken)
        assert isinstance(trace, SpannedRequest)
        failed = status >= 500 or broken
        if trace.attempt_span is not None:
            trace.attempt_span.set_attribute("http.response.status_code", status)
            if failed:
                trace.attempt_span.set_status(Status(StatusCode.ERROR, outcome))
            trace.attempt_span.end()
            trace.attempt_span = None
        span = trace.span
        span.set_attributes(
            {
                "llm_router.node": trace.node,
                "llm_router.attempts": trace.attempts,
                "llm_router.queue_wait_ms": round(trace.queue_ms, 1),
                "llm_router.outcome": outcome,
                "llm_router.affinity": trace.affinity,
                "http.response.status_code": status,
            }
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()
