"""Tracing across real processes: a client's trace continues through a router replica and
a node agent to the runtime, every span exported over OTLP/HTTP to a receiver in this test.

The runtime behind the agent is this test's own HTTP server, so the test sees the
``traceparent`` the agent passes on."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from integration.probes import SdkClients
from integration.procs import Cluster, _flags, free_port_pair, wait_until

pytestmark = pytest.mark.redis

MODEL = "tiny-q4_k_m.gguf"
NODE_SPAN = "runtime call /v1/chat/completions"


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver (protobuf), keeping every span it is sent."""

    spans: list[Span]

    def do_POST(self) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append(
                        Span(
                            service=str(resource.get("service.name")),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class Runtime(BaseHTTPRequestHandler):
    """An OpenAI-compatible runtime that notes the trace context of each request."""

    seen: list[dict[str, str]]

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        time.sleep(float(body.get("metadata", {}).get("sleep", 0)))
        self._json(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    def _json(self, payload: Any, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler], port: int) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def spans() -> Iterator[tuple[int, list[Span]]]:
    collected: list[Span] = []
    handler = type("Receiver", (Receiver,), {"spans": collected})
    port = free_port_pair()
    for _ in _serve(handler, port):
        yield port, collected


@pytest.fixture
def runtime() -> Iterator[tuple[int, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Runtime", (Runtime,), {"seen": seen})
    port = free_port_pair()
    for _ in _serve(handler, port):
        yield port, seen


def _start_agent(
    cluster: Cluster, router_url: str, runtime_port: int, env: dict[str, str] | None
) -> None:
    """``llm-router node`` in front of the test's runtime; returns once it is online."""
    flags = {
        "router_url": router_url,
        "runtime_url": f"http://127.0.0.1:{runtime_port}",
        "port": free_port_pair(),
        "gpu_backend": "cpu",
        "machine_name": "traced",
        "max_concurrency": 1,
        "heartbeat_interval_s": 0.5,
        "log_level": "warning",
    }
    agent = cluster._spawn("node-traced.log", ["node", *_flags(flags)], env)

    def online() -> bool:
        assert agent.alive, agent.log_tail()
        return any(
            r.get("machine_name") == "traced" and r.get("status") == "online"
            for r in cluster.nodes_view()
        )

    wait_until(online, 20, "the traced node to come online")


def _trace_of(spans: list[Span], trace_id: str) -> dict[str, Span]:
    return {s.name: s for s in spans if s.trace_id == trace_id}


async def test_a_trace_runs_from_client_to_runtime(
    cluster: Cluster,
    sdk: SdkClients,
    spans: tuple[int, list[Span]],
    runtime: tuple[int, list[dict[str, str]]],
) -> None:
    otlp_port, collected = spans
    runtime_port, seen = runtime
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    router = cluster.start_router(env=env)
    cluster.wait_ready(router)
    _start_agent(cluster, router.url, runtime_port, env)
    client = sdk(router)

    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    reply = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
    )
    node_id = reply.headers["x-llm-router-node"]
    names = {
        "llm-router request",
        "acquire",
        "upstream attempt",
        "runtime call /v1/chat/completions",
    }
    wait_until(lambda: set(_trace_of(collected, trace_id)) >= names, 15, "the request's spans")
    trace = _trace_of(collected, trace_id)
    root, acquire = trace["llm-router request"], trace["acquire"]
    attempt, node_span = trace["upstream attempt"], trace[NODE_SPAN]

    assert root.service == acquire.service == attempt.service == "llm-router"
    assert node_span.service == "llm-router-node"
    assert root.parent_id == client_span
    assert acquire.parent_id == attempt.parent_id == root.span_id
    assert node_span.parent_id == attempt.span_id
    assert root.attributes["gen_ai.request.model"] == MODEL
    assert root.attributes["llm_router.node"] == node_id
    assert root.attributes["llm_router.attempts"] == 1
    assert root.attributes["llm_router.outcome"] == "routed"
    # A first turn opens a conversation: its affinity outcome is "new".
    assert root.attributes["llm_router.affinity"] == "new"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["llm_router.queue_wait_ms"] == 0
    assert "queue wait" not in trace
    # The runtime is handed the agent's span as its parent.
    (runtime_headers,) = [h for h in seen if trace_id in h.get("traceparent", "")]
    assert runtime_headers["traceparent"] == f"00-{trace_id}-{node_span.span_id}-01"

    # Two at once on a one-slot node: one of them waits, and its trace shows the wait.
    ids = [secrets.token_hex(16) for _ in range(2)]
    await asyncio.gather(
        *(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                metadata={"sleep": "0.5"},
                extra_headers={"traceparent": f"00-{tid}-{secrets.token_hex(8)}-01"},
            )
            for tid in ids
        )
    )
    wait_until(
        lambda: all("llm-router request" in _trace_of(collected, t) for t in ids),
        15,
        "both requests' spans",
    )
    traces = [_trace_of(collected, t) for t in ids]
    waited = [t for t in traces if "queue wait" in t]
    assert len(waited) == 1, [sorted(t) for t in traces]
    (queued,) = waited
    assert queued["queue wait"].parent_id == queued["acquire"].span_id
    assert queued["llm-router request"].attributes["llm_router.queue_wait_ms"] > 0
    assert queued["llm-router request"].attributes["llm_router.outcome"] == "queued"


def test_without_tracing_the_clients_traceparent_reaches_the_runtime(
    cluster: Cluster, runtime: tuple[int, list[dict[str, str]]]
) -> None:
    runtime_port, seen = runtime
    (router,) = cluster.up()
    _start_agent(cluster, router.url, runtime_port, None)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    reply = httpx.post(
        f"{router.api_base}/chat/completions", json=body, headers={"traceparent": traceparent}
    )
    assert reply.status_code == 200
    assert [h.get("traceparent") for h in seen] == [traceparent]
