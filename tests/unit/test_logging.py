"""Access-log lines are JSON, one per proxied request, with the fields an operator greps
for; nothing is logged per request when the access log is off."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from llm_router.app import create_app
from llm_router.node.server import make_server
from llm_router.observability.access_log import (
    AccessLineHandler,
    AccessLog,
    JsonFormatter,
    access_logger,
)
from llm_router.settings import RouterSettings
from llm_router.sim.runtime import SimConfig, SimRuntime
from llm_router.state.connect import open_store

FIELDS = {
    "ts",
    "event",
    "replica",
    "request_id",
    "model",
    "node",
    "status",
    "outcome",
    "attempts",
    "queue_wait_ms",
    "duration_ms",
    "stream",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def node_port() -> Iterator[int]:
    # Own thread and loop: the test client runs the router in a loop of its own.
    port = _free_port()
    runtime = SimRuntime(SimConfig(node_name="sim-a", models=("m1",), ttft_ms=1, tokens_per_s=1e5))
    server = make_server(runtime, "127.0.0.1", port)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def _client(
    node_port: int, access_log: bool
) -> AsyncIterator[tuple[AsyncTestClient[Any], Lines]]:
    app = create_app(RouterSettings(access_log=access_log), store=open_store(None))
    telemetry = app.state.fleet.telemetry
    lines = Lines()
    if access_log:
        logger = logging.getLogger(f"test.access.{uuid.uuid4().hex}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(lines)
        telemetry.observer.access_log = AccessLog(logger, "replica-a")
    async with AsyncTestClient(app) as client:
        resp = await client.post(
            "/v0/nodes",
            json={
                "machine_name": "sim-a",
                "ip_address": "127.0.0.1",
                "runtime_port": node_port - 1,
                "node_api_port": node_port,
                "gpu_backend": "cpu",
                "executable_models": ["m1"],
            },
        )
        assert resp.status_code == 201
        yield client, lines


@pytest.fixture
async def logged(node_port: int) -> AsyncIterator[tuple[AsyncTestClient[Any], Lines]]:
    async for pair in _client(node_port, access_log=True):
        yield pair


async def test_one_json_line_per_request(logged: tuple[AsyncTestClient[Any], Lines]) -> None:
    client, lines = logged
    ok = await client.post(
        "/v1/chat/completions", json={"model": "m1"}, headers={"x-request-id": "req-1"}
    )
    assert ok.status_code == 200
    streamed = await client.post(
        "/v1/chat/completions",
        json={"model": "m1", "stream": True},
        headers={"x-request-id": "s-2"},
    )
    assert streamed.status_code == 200
    missing = await client.post("/v1/completions", json={"model": "ghost"})
    assert missing.status_code == 404

    assert len(lines.lines) == 3
    entries = [json.loads(line) for line in lines.lines]
    assert all(set(e) >= FIELDS for e in entries), entries
    first, second, third = entries
    node_id = ok.headers["x-llm-router-node"]
    assert first["request_id"] == "req-1" and first["node"] == node_id
    assert first["status"] == 200 and first["outcome"] == "routed" and first["attempts"] == 1
    assert first["ttfb_ms"] >= first["upstream_ms"] >= 0
    assert first["replica"] == "replica-a" and first["event"] == "request"
    assert second["request_id"] == "s-2" and second["stream"] is True
    assert third["status"] == 404 and third["outcome"] == "model_not_found"
    assert third["node"] is None and third["attempts"] == 0
    assert third["request_id"] == missing.headers.get("x-request-id", third["request_id"])


async def test_no_access_log_by_default(node_port: int) -> None:
    async for client, lines in _client(node_port, access_log=False):
        assert client.app.state.fleet.telemetry.observer.access_log is None
        assert (await client.post("/v1/chat/completions", json={"model": "m1"})).status_code == 200
        assert lines.lines == []


async def test_decisions_reach_the_shared_list(logged: tuple[AsyncTestClient[Any], Lines]) -> None:
    client, _ = logged
    await client.post("/v1/chat/completions", json={"model": "m1"}, headers={"x-request-id": "d1"})
    telemetry = client.app.state.fleet.telemetry
    await telemetry.decisions.flush()
    state = (await client.get("/dashboard/api/state")).json()
    assert state["decisions"][0]["request_id"] == "d1"
    assert state["decisions"][0]["outcome"] == "routed"


def test_access_logger_writes_bare_json_to_stdout() -> None:
    logger = access_logger()
    assert access_logger() is logger
    ours = [h for h in logger.handlers if isinstance(h, AccessLineHandler)]
    assert len(ours) == 1 and logger.propagate is False
    stream = io.StringIO()
    handler = ours[0]
    old = handler.setStream(stream)
    try:
        AccessLog(logger, "r1").write({"request_id": "x", "status": 200})
    finally:
        handler.setStream(old)
    line = json.loads(stream.getvalue())
    assert line["request_id"] == "x" and line["replica"] == "r1"


def test_json_formatter_output_parses() -> None:
    record = logging.LogRecord(
        "llm_router.x", logging.WARNING, __file__, 1, 'a "q" %s', ("b",), None
    )
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    body = json.loads(JsonFormatter().format(record))
    assert body["level"] == "warning" and body["message"] == 'a "q" b'
    assert body["logger"] == "llm_router.x" and "boom" in body["exc"]
