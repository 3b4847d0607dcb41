"""End to end on real processes: the real node agent in front of a runtime, and the fleet
state shared by two router replicas.

The nodes here are ``llm-router node`` (the production agent) fronting a simulated runtime
process, not ``sim-node``: this is the path a real Mac Studio or CUDA box takes.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from integration.conftest import open_cluster
from integration.procs import Cluster, Proc, free_port, free_port_pair, wait_until

MLX_ONLY = "mlx-community/Llama-3.2-1B-Instruct-4bit"
SHARED = "llama-3.2-1b-instruct-q4_k_m.gguf"
AWQ = "Qwen2.5-0.5B-Instruct-AWQ"


def _spawn(cluster: Cluster, name: str, args: list[str]) -> Proc:
    proc = Proc(name, [sys.executable, "-m", *args], cluster.workdir / name)
    proc.start()
    cluster._procs.append(proc)
    return proc


def _start_real_node(
    cluster: Cluster, name: str, backend: str, models: list[str], catalog: Path | None = None
) -> tuple[Proc, int]:
    runtime_port = free_port()
    _spawn(
        cluster,
        f"runtime-{name}.log",
        [
            "llm_router.sim.standalone",
            "--port",
            str(runtime_port),
            "--models",
            ",".join(models),
            "--node-name",
            name,
        ],
    )
    agent_port = free_port_pair()
    args = [
        "llm_router.cli",
        "node",
        "--router-url",
        cluster.routers[0].url,
        "--runtime-url",
        f"http://127.0.0.1:{runtime_port}",
        "--port",
        str(agent_port),
        "--machine-name",
        name,
        "--gpu-backend",
        backend,
        "--heartbeat-interval-s",
        "0.5",
        "--register-retry-max-s",
        "0.5",
        "--log-level",
        "warning",
    ]
    if catalog is not None:
        args += ["--catalog", str(catalog)]
    return _spawn(cluster, f"agent-{name}.log", args), agent_port


@pytest.fixture(scope="module")
def real_fleet(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    catalog = tmp_path_factory.mktemp("catalog") / "catalog.json"
    # The runtime lists the MLX model on the CUDA box too (installed, not executable).
    catalog.write_text(json.dumps({"models": [{"id": MLX_ONLY, "format": "mlx"}]}))
    with open_cluster(redis_url) as cluster:
        cluster.up(routers=2)
        _start_real_node(cluster, "studio", "metal", [SHARED, MLX_ONLY], catalog)
        _start_real_node(cluster, "cudabox", "cuda", [SHARED, MLX_ONLY, AWQ], catalog)

        def both_online() -> bool:
            view = cluster.nodes_view()
            return len(view) == 2 and all(n["status"] == "online" for n in view)

        wait_until(both_online, 30, "both real node agents to come online")
        yield cluster


def test_models_are_the_union_and_identical_on_both_replicas(real_fleet: Cluster) -> None:
    views = [httpx.get(f"{r.url}/v1/models").json()["data"] for r in real_fleet.routers]
    assert views[0] == views[1]
    ids = {m["id"] for m in views[0]}
    assert ids == {SHARED, MLX_ONLY, AWQ}
    by_id = {m["id"]: m for m in views[0]}
    assert by_id[MLX_ONLY]["backends"] == ["metal"]
    assert by_id[SHARED]["node_count"] == 2


def test_cuda_node_reports_the_mlx_model_as_installed_not_executable(real_fleet: Cluster) -> None:
    records = {n["machine_name"]: n for n in real_fleet.nodes_view()}
    assert records["cudabox"]["gpu_backend"] == "cuda"
    assert MLX_ONLY in records["cudabox"]["models"]
    assert MLX_ONLY not in records["cudabox"]["executable_models"]
    assert MLX_ONLY in records["studio"]["executable_models"]


def test_metal_only_model_is_never_served_by_the_cuda_node(real_fleet: Cluster) -> None:
    ids = real_fleet.node_ids()
    served: Counter[str] = Counter()
    for router in real_fleet.routers:
        client = openai.OpenAI(base_url=router.api_base, api_key="x", max_retries=0)
        for _ in range(15):
            raw = client.chat.completions.with_raw_response.create(
                model=MLX_ONLY, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            served[raw.headers["x-llm-router-node"]] += 1
            assert raw.parse().model == MLX_ONLY
    assert served == Counter({ids["studio"]: 30})


def test_cuda_only_model_goes_to_cuda(real_fleet: Cluster) -> None:
    ids = real_fleet.node_ids()
    client = openai.OpenAI(base_url=real_fleet.routers[1].api_base, api_key="x", max_retries=0)
    for _ in range(5):
        raw = client.chat.completions.with_raw_response.create(
            model=AWQ, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert raw.headers["x-llm-router-node"] == ids["cudabox"]
        assert "cudabox" in (raw.parse().choices[0].message.content or "")


def test_streaming_through_router_and_agent(real_fleet: Cluster) -> None:
    client = openai.OpenAI(base_url=real_fleet.routers[0].api_base, api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model=SHARED, messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text


def test_node_registered_on_one_replica_heartbeats_to_the_other_and_times_out(
    redis_url: str,
) -> None:
    """Fleet state is shared: replicas agree on a node none of them owns."""
    with open_cluster(redis_url) as cluster:
        first, second = cluster.up(routers=2)
        body = {
            "machine_name": "hand-made",
            "ip_address": "127.0.0.1",
            "runtime_port": 9,
            "gpu_backend": "cpu",
            "executable_models": ["hand-model"],
        }
        reg = httpx.post(f"{first.url}/v0/nodes", json=body).json()
        beat = httpx.post(
            f"{second.url}/v0/health",
            json={"node_id": reg["node_id"], "executable_models": ["hand-model", "hand-2"]},
            headers={"X-Node-Token": reg["node_token"]},
        )
        assert beat.status_code == 200
        for router in (first, second):
            nodes = httpx.get(f"{router.url}/v0/nodes").json()
            assert [n["id"] for n in nodes] == [reg["node_id"]]
            models = {m["id"] for m in httpx.get(f"{router.url}/v1/models").json()["data"]}
            assert models == {"hand-model", "hand-2"}
        # No more heartbeats: offline within the node timeout (1.5 s) on both replicas.
        started = time.monotonic()
        wait_until(
            lambda: all(
                httpx.get(f"{r.url}/v1/models").json()["data"] == [] for r in (first, second)
            ),
            5,
            "the silent node's models to leave /v1/models",
        )
        assert time.monotonic() - started < 3.5
        for router in (first, second):
            (node,) = httpx.get(f"{router.url}/v0/nodes").json()
            assert node["status"] == "offline"
            chat = httpx.post(f"{router.url}/v1/chat/completions", json={"model": "hand-model"})
            assert chat.status_code == 503
            assert chat.json()["error"]["code"] == "no_capable_nodes"
            assert "retry-after" in chat.headers
