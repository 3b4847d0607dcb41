"""/metrics after real requests through the router app: names, labels, exposition format,
fleet-wide gauges from the store, and bounded label cardinality.

The router runs in process on the embedded store; the nodes it proxies to are simulated
runtimes listening on real loopback sockets, so the proxy's HTTP client does real work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from llm_router.app import create_app
from llm_router.node.server import make_server
from llm_router.observability.fleet_view import FleetView, refresh_fleet_gauges
from llm_router.observability.metrics import OTHER, LabelCap, Registry
from llm_router.observability.observer import Observer
from llm_router.observability.router_metrics import RouterMetrics
from llm_router.protocol import RegisterRequest
from llm_router.settings import RouterSettings
from llm_router.sim.runtime import SimConfig, SimRuntime
from llm_router.state.connect import open_store
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, RegistryConfig
from llm_router.state.scripts import FleetScripts

_SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})?'
    r" (?P<value>[-+]?(?:[0-9.e+-]+|Inf|NaN))$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse the text exposition strictly: every line is a comment or a valid sample."""
    assert text.endswith("\n")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert name not in typed, f"{name} typed twice"
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a valid sample line: {line!r}"
        labels = dict(_LABEL.findall(match["labels"] or ""))
        samples.setdefault(match["name"], []).append((labels, float(match["value"])))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    matching = [
        v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())
    ]
    assert matching, f"no sample {name}{labels}; have {samples.get(name)}"
    return sum(matching)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Rig:
    client: AsyncTestClient[Any]
    node_id: str
    port: int


@contextlib.contextmanager
def sim_runtime(name: str, models: tuple[str, ...]) -> Iterator[int]:
    """A simulated runtime on a loopback port, served from its own thread and event loop:
    the test client runs the router in another loop, and neither may block the other."""
    port = free_port()
    runtime = SimRuntime(SimConfig(node_name=name, models=models, ttft_ms=1, tokens_per_s=1e5))
    server = make_server(runtime, "127.0.0.1", port)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "sim runtime did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    with sim_runtime("sim-a", ("m1",)) as port:
        app = create_app(RouterSettings(), store=open_store(None))
        async with AsyncTestClient(app) as client:
            resp = await client.post(
                "/v0/nodes",
                json={
                    "machine_name": "sim-a",
                    "ip_address": "127.0.0.1",
                    "runtime_port": port - 1,
                    "node_api_port": port,
                    "gpu_backend": "metal",
                    "executable_models": ["m1"],
                    "models": ["m1", "installed-only"],
                },
            )
            assert resp.status_code == 201, resp.text
            yield Rig(client, resp.json()["node_id"], port)


async def scrape(client: AsyncTestClient[Any]) -> dict[str, list[tuple[dict[str, str], float]]]:
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return parse(resp.text)


async def test_requests_are_counted_by_model_node_and_status(rig: Rig) -> None:
    c = rig.client
    for _ in range(3):
        r = await c.post("/v1/chat/completions", json={"model": "m1", "max_tokens": 2})
        assert r.status_code == 200
    r = await c.post("/v1/chat/completions", json={"model": "m1", "stream": True, "max_tokens": 2})
    assert r.status_code == 200 and "[DONE]" in r.text
    assert (await c.post("/v1/chat/completions", json={"model": "nope"})).status_code == 404
    assert (
        await c.post("/v1/chat/completions", json={"model": "installed-only"})
    ).status_code == 503

    m = await scrape(c)
    assert value(m, "llm_router_requests_total", model="m1", node=rig.node_id, status="200") == 4
    # A model the fleet does not know is counted under "other", taking no label of its own.
    assert value(m, "llm_router_requests_total", model="other", node="none", status="404") == 1
    assert value(m, "llm_router_requests_total", model="installed-only", status="503") == 1
    assert value(m, "llm_router_routing_decisions_total", reason="routed") == 4
    assert value(m, "llm_router_routing_decisions_total", reason="model_not_found") == 1
    assert value(m, "llm_router_routing_decisions_total", reason="no_capable_nodes") == 1
    for hist in (
        "llm_router_upstream_latency_seconds",
        "llm_router_time_to_first_byte_seconds",
        "llm_router_request_duration_seconds",
    ):
        assert value(m, f"{hist}_count", model="m1") == 4
        assert value(m, f"{hist}_bucket", model="m1", le="+Inf") == 4
    assert value(m, "llm_router_overhead_seconds_count") == 4
    assert value(m, "llm_router_request_attempts_bucket", le="1") == 4
    # Every acquire is a script call, timed by script name.
    assert value(m, "llm_router_redis_command_seconds_count", command="acquire") == 6
    assert value(m, "llm_router_leases_held") == 0
    assert value(m, "llm_router_build_info") == 1


async def test_histogram_buckets_are_cumulative(rig: Rig) -> None:
    for _ in range(2):
        await rig.client.post("/v1/embeddings", json={"model": "m1", "input": "x"})
    m = await scrape(rig.client)
    buckets = [
        (float(lab["le"]), v)
        for lab, v in m["llm_router_upstream_latency_seconds_bucket"]
        if lab["model"] == "m1"
    ]
    counts = [v for _, v in sorted(buckets)]
    assert counts == sorted(counts) and counts[-1] == 2


async def test_failover_and_exclusion_are_counted(rig: Rig) -> None:
    dead = free_port()
    resp = await rig.client.post(
        "/v0/nodes",
        json={
            "machine_name": "dead",
            "ip_address": "127.0.0.1",
            "runtime_port": dead - 1,
            "node_api_port": dead,
            "gpu_backend": "cuda",
            "executable_models": ["m1"],
            # Preferred by the routing score, so the first attempt goes to the dead node.
            "gpu_capability_score": 9999,
        },
    )
    dead_id = resp.json()["node_id"]
    r = await rig.client.post("/v1/chat/completions", json={"model": "m1"})
    assert r.status_code == 200
    assert r.headers["x-llm-router-node"] == rig.node_id
    m = await scrape(rig.client)
    assert value(m, "llm_router_routing_decisions_total", reason="failover") == 1
    assert value(m, "llm_router_routing_decisions_total", reason="excluded") == 1
    assert value(m, "llm_router_routing_decisions_total", reason="routed") == 2
    assert value(m, "llm_router_request_attempts_bucket", le="1") == 0
    assert value(m, "llm_router_request_attempts_bucket", le="2") == 1
    assert value(m, "llm_router_requests_total", node=rig.node_id, status="200") == 1
    # Both nodes are registered and alive: the fleet gauges see them whatever their health.
    assert value(m, "llm_router_fleet_node_up", node=dead_id) == 1
    assert value(m, "llm_router_fleet_nodes", status="online") == 2


async def test_fleet_gauges_come_from_the_store(rig: Rig) -> None:
    m = await scrape(rig.client)
    assert value(m, "llm_router_fleet_state_up") == 1
    assert value(m, "llm_router_fleet_nodes", status="online", backend="metal") == 1
    assert value(m, "llm_router_fleet_node_up", node=rig.node_id) == 1
    assert value(m, "llm_router_fleet_node_capacity", node=rig.node_id) == 4
    assert value(m, "llm_router_fleet_node_leases", node=rig.node_id) == 0
    assert value(m, "llm_router_fleet_node_info", node=rig.node_id, machine="sim-a") == 1
    assert value(m, "llm_router_fleet_queue_depth", model="m1") == 0
    assert value(m, "llm_router_fleet_models") == 1
    assert 0 <= value(m, "llm_router_fleet_node_heartbeat_age_seconds", node=rig.node_id) < 60


async def test_a_deregistered_node_leaves_the_fleet_gauges(rig: Rig) -> None:
    before = await scrape(rig.client)
    assert value(before, "llm_router_fleet_node_up", node=rig.node_id) == 1
    assert (await rig.client.delete(f"/v0/nodes/{rig.node_id}")).status_code in (200, 204)
    # The fleet view is cached for a second; a fresh app state would not be: wait it out.
    rig.client.app.state.fleet.telemetry.view.invalidate()
    after = await scrape(rig.client)
    assert "llm_router_fleet_node_up" not in after
    assert value(after, "llm_router_fleet_models") == 0


def test_label_cap_keeps_the_first_values_and_folds_the_rest() -> None:
    cap = LabelCap(2)
    assert [cap(v) for v in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]


def test_per_request_series_are_bounded() -> None:
    metrics = RouterMetrics(max_models=5, max_nodes=3)
    observer = Observer(metrics)
    for i in range(500):
        trace = observer.begin(f"model-{i}", f"r{i}")
        observer.leased(trace, f"node-{i}", None)
        trace.sending()
        trace.answered()
        observer.finish(trace, 200)
    samples = parse(metrics.registry.render())
    models = {lab["model"] for lab, _ in samples["llm_router_requests_total"]}
    nodes = {lab["node"] for lab, _ in samples["llm_router_requests_total"]}
    assert len(models) == 6 and OTHER in models
    assert len(nodes) == 4 and OTHER in nodes
    assert value(samples, "llm_router_requests_total") == 500
    assert len(samples["llm_router_upstream_latency_seconds_count"]) == 6


async def test_fleet_gauges_are_bounded_with_many_nodes() -> None:
    store = open_store(None)
    keys = Keys("cap")
    scripts = FleetScripts(store.redis, keys)
    registry = NodeRegistry(
        store.redis, keys, scripts, RegistryConfig(alive_ttl_ms=60_000, forget_ms=600_000)
    )
    for i in range(12):
        request = RegisterRequest.model_validate(
            {
                "machine_name": f"n{i}",
                "ip_address": "127.0.0.1",
                "runtime_port": 9000 + i,
                "gpu_backend": "cuda",
            }
        )
        await registry.register(request, executable_models=[f"m{i}"], gpu_backend="cuda")
    metrics = RouterMetrics(max_models=4, max_nodes=5)
    await refresh_fleet_gauges(FleetView(store.redis, keys, registry, forget_ms=600_000), metrics)
    samples = parse(metrics.registry.render())
    up = samples["llm_router_fleet_node_up"]
    assert len(up) == 6
    assert dict((lab["node"], v) for lab, v in up)[OTHER] == 7  # the folded nodes, all online
    assert sum(v for _, v in up) == 12
    assert len(samples["llm_router_fleet_node_info"]) == 5
    assert len(samples["llm_router_fleet_queue_depth"]) == 5
    assert value(samples, "llm_router_fleet_nodes", status="online", backend="cuda") == 12
    await store.close()


async def test_store_outage_keeps_the_scrape_alive() -> None:
    store = open_store("redis://127.0.0.1:1/0", timeout_s=0.2)
    keys = Keys("down")
    scripts = FleetScripts(store.redis, keys)
    registry = NodeRegistry(
        store.redis, keys, scripts, RegistryConfig(alive_ttl_ms=1000, forget_ms=1000)
    )
    metrics = RouterMetrics()
    await refresh_fleet_gauges(FleetView(store.redis, keys, registry, forget_ms=1000), metrics)
    samples = parse(metrics.registry.render())
    assert value(samples, "llm_router_fleet_state_up") == 0
    await store.close()


def test_exposition_escapes_label_values() -> None:
    registry = Registry()
    counter = registry.counter("x_total", "help", ["model"])
    counter.inc('we"ird\\name\nhere')
    text = registry.render()
    assert 'x_total{model="we\\"ird\\\\name\\nhere"} 1' in text
    parse(text)


def test_a_metric_name_is_registered_once() -> None:
    registry = Registry()
    registry.gauge("g", "help")
    with pytest.raises(ValueError, match="twice"):
        registry.gauge("g", "again")


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    path = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "llm-router.json"
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", n)
        for e in exprs
        for n in re.findall(r"llm_router_\w+", e)
    }
    exported = {m.name for m in RouterMetrics().registry._metrics}
    assert used and used <= exported, used - exported
    # Fleet gauges are the same on every replica: panels must not sum them across replicas.
    for expr in exprs:
        if "llm_router_fleet_" in expr and "fleet_state_up" not in expr:
            assert "max" in expr, expr
