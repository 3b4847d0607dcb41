"""OpenTelemetry tracing for a process (router replica or node agent), off by default.

It is switched on by the standard variables alone: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), or ``OTEL_TRACES_EXPORTER`` naming an exporter
(``otlp``, ``console``); ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keeps it
off. Everything else (service name, resource attributes, sampler, batch delays, headers,
propagators) is read by the SDK from its own ``OTEL_*`` variables. The SDK is an optional
extra (``llm-router[otel]``): nothing here imports it unless tracing is on, and when it is
off the hooks below are a ``None`` check.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

_OFF = frozenset({"", "none"})
_NO_SPAN = contextlib.nullcontext()

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


class TracingUnavailable(RuntimeError):
    """Tracing was asked for but cannot run (SDK missing, unknown exporter)."""


def requested(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters not in _OFF
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingUnavailable(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}")
    protocol = env.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol and protocol != "http/protobuf":
        raise TracingUnavailable(
            f"OTLP protocol {protocol!r} is not supported: use http/protobuf (the default)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Start tracing for this process when the environment asks for it; True when on."""
    global _tracer, _provider
    env = os.environ if env is None else env
    if _tracer is not None or not requested(env):
        return _tracer is not None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            "OTEL_* asks for tracing but the SDK is not installed: pip install 'llm-router[otel]'"
        ) from exc
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    exporters = [_exporter(n, env) for n in names if n not in _OFF]
    # Our name unless the operator gave one (OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES).
    given = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if given else {"service.name": service_name})
    provider = TracerProvider(resource=resource)  # flushes at interpreter exit
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("llm_router")
    return True


def tracer() -> Tracer | None:
    """This process's tracer, or None when tracing is off."""
    return _tracer


def flush() -> None:
    if _provider is not None:
        _provider.force_flush()


# --- the node agent's hook ------------------------------------------------------------------


def runtime_call(scope: Mapping[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """Around the agent's call to its runtime: a span continuing the router's trace (from
    the request's ``traceparent``), current for the call so that ``inject`` passes it on."""
    if _tracer is None:
        return _NO_SPAN
    return _runtime_span(_tracer, scope)


@contextlib.contextmanager
def _runtime_span(tracer: Tracer, scope: Mapping[str, Any]) -> Iterator[None]:
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    path = scope.get("path", "")
    with tracer.start_as_current_span(
        f"runtime call {path}",
        context=extract(carrier),
        kind=SpanKind.CLIENT,
        attributes={"url.path": path, "llm_router.request_id": carrier.get("x-request-id", "")},
    ):
        yield


def inject(headers: MutableMapping[str, str]) -> None:
    """Put the current span's ``traceparent`` into outgoing ``headers`` (tracing on)."""
    if _tracer is not None:
        from opentelemetry.propagate import inject as otel_inject

        otel_inject(headers)
