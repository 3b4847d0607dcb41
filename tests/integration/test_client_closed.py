"""A client that leaves in the middle of a stream is recorded as ``client_closed``: in the
metrics, the access log and the fleet's recent decisions, with real router and node
processes and the official SDK as the client that walks away."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from integration.probes import SdkClients
from integration.procs import Cluster, Router, wait_until

pytestmark = pytest.mark.redis

MODEL = "slow-gguf"


def _closed_count(router: Router) -> float:
    text = httpx.get(f"{router.url}/metrics", timeout=2.0).text
    for line in text.splitlines():
        if line.startswith('llm_router_routing_decisions_total{reason="client_closed"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _access_lines(router: Router) -> list[dict[str, Any]]:
    lines = router.proc.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"ts"') and '"event"' in line]


def _decisions(router: Router) -> list[dict[str, Any]]:
    state = httpx.get(f"{router.url}/dashboard/api/state", timeout=2.0).json()
    decisions: list[dict[str, Any]] = state["decisions"]
    return decisions


async def test_leaving_mid_stream_is_client_closed(cluster: Cluster, sdk: SdkClients) -> None:
    (router,) = cluster.up(access_log=True)
    # Slow enough that the stream is still running when the client walks away.
    cluster.start_node([MODEL], backend="cpu", tokens_per_s=20)
    cluster.wait_all()
    client = sdk(router)

    finished = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
    )
    async for _ in finished:
        pass
    assert _closed_count(router) == 0

    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=400,
        stream=True,
        extra_headers={"x-request-id": "walks-away"},
    )
    async for chunk in stream:
        assert chunk.choices
        break
    await stream.close()

    wait_until(lambda: _closed_count(router) == 1, 10, "client_closed in /metrics")
    wait_until(
        lambda: any(e["request_id"] == "walks-away" for e in _access_lines(router)),
        10,
        "the access-log line",
    )
    entries = {e["request_id"]: e for e in _access_lines(router)}
    left = entries["walks-away"]
    assert left["outcome"] == "client_closed" and left["stream"] is True
    assert left["status"] == 200  # the status line the client did receive
    assert left["duration_ms"] < 400 / 20 * 1000  # recorded when it left, not at the end
    others = [e for rid, e in entries.items() if rid != "walks-away"]
    assert [e["outcome"] for e in others] == ["routed"]

    wait_until(
        lambda: any(d["request_id"] == "walks-away" for d in _decisions(router)),
        10,
        "the recent decision",
    )
    (decision,) = [d for d in _decisions(router) if d["request_id"] == "walks-away"]
    assert decision["outcome"] == "client_closed"
