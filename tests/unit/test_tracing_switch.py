"""Tracing is switched by the standard OTEL_* variables alone, and is off by default."""

from __future__ import annotations

import pytest

from llm_router.observability import tracing


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:1"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_requested(env: dict[str, str], on: bool) -> None:
    assert tracing.requested(env) is on


def test_unsupported_protocol_is_refused_by_name() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with pytest.raises(tracing.TracingUnavailable, match="grpc"):
        tracing.configure("llm-router", env)
    assert tracing.tracer() is None


def test_the_hooks_do_nothing_when_off() -> None:
    headers: dict[str, str] = {}
    with tracing.runtime_call({"headers": [(b"traceparent", b"00-x")], "path": "/v1/x"}):
        tracing.inject(headers)
    assert headers == {}
