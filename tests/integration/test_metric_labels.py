"""Metrics labels through a real router and simulated node: junk model names from one
client take no model label, so the fleet's real models keep their own series."""

from __future__ import annotations

import httpx
import pytest

from integration.probes import chat_body
from integration.procs import Cluster

pytestmark = pytest.mark.redis

#: More junk names than the replica keeps model labels (64).
JUNK = 80


def test_unknown_models_do_not_crowd_out_real_ones(cluster: Cluster) -> None:
    cluster.start_router()
    cluster.start_node(["m-real"], backend="cpu")
    cluster.wait_all()
    api = cluster.routers[0].api_base
    with httpx.Client(timeout=10) as client:
        for i in range(JUNK):
            assert (
                client.post(f"{api}/chat/completions", json=chat_body(f"junk-{i}")).status_code
                == 404
            )
        assert client.post(f"{api}/chat/completions", json=chat_body("m-real")).status_code == 200
        text = client.get(f"{cluster.routers[0].url}/metrics").text
    requests = [line for line in text.splitlines() if line.startswith("llm_router_requests_total{")]
    assert any('model="m-real"' in line for line in requests), requests
    assert not any('model="junk-' in line for line in requests), requests
