"""With ``--log-format json`` (``LLM_ROUTER_LOG_FORMAT=json``) every line a router or node
agent process writes is one JSON object: our loggers, uvicorn's start-up and shutdown
lines, the access log, warnings."""

from __future__ import annotations

import json
import signal
from typing import Any

import httpx
import pytest

from integration.procs import Cluster, Proc

pytestmark = pytest.mark.redis


def _records(proc: Proc) -> list[dict[str, Any]]:
    lines = [line for line in proc.log_path.read_text().splitlines() if line.strip()]
    assert lines, f"{proc.name} wrote nothing"
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{proc.name}: not a JSON line: {line!r}")
        assert isinstance(record, dict), line
        records.append(record)
    return records


def _stop(proc: Proc) -> None:
    proc.signal_group(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert proc.process.wait(timeout=20) in (0, -signal.SIGTERM)


def test_every_line_is_json(cluster: Cluster) -> None:
    (router,) = cluster.up(log_format="json", log_level="info", access_log=True)
    node = cluster.start_node(["m1"], backend="cpu", log_format="json", log_level="info")
    cluster.wait_all()
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{router.api_base}/chat/completions", json=body).status_code == 200
    missing = httpx.post(f"{router.api_base}/chat/completions", json={**body, "model": "nope"})
    assert missing.status_code == 404
    _stop(node.proc)
    _stop(router.proc)

    routed = _records(router.proc)
    loggers = {r.get("logger") for r in routed}
    assert {"uvicorn.error", "llm_router"} <= loggers, loggers
    assert {r["status"] for r in routed if r.get("event") == "request"} == {200, 404}
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in routed if "logger" in r)

    agent = _records(node.proc)
    agent_loggers = {r.get("logger") for r in agent}
    assert "llm_router.node" in agent_loggers, agent_loggers
    # Heartbeats and runtime readings are DEBUG matters: at INFO the HTTP client's own line
    # per call stays out of the agent's log.
    assert "httpx" not in agent_loggers, agent_loggers


def test_text_is_still_the_default(cluster: Cluster) -> None:
    (router,) = cluster.up(log_level="info")
    _stop(router.proc)
    lines = router.proc.log_path.read_text().splitlines()
    assert lines and not any(line.startswith("{") for line in lines)
    assert any(" INFO uvicorn.error: " in line for line in lines), lines
