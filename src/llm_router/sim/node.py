"""``llm-router sim-node``: the simulated runtime with the real node agent in front of it.

The runtime listens on loopback at ``port - 1`` (the wire convention ``runtime_port =
node_api_port - 1``) and the agent on ``host:port``, so registration, heartbeats and the
node API take exactly the code paths of a real node.
"""

from __future__ import annotations

import asyncio

from llm_router import __version__
from llm_router.gpu import GpuBackend
from llm_router.node.agent import run_agent
from llm_router.node.catalog import load_catalog
from llm_router.node.detect import GpuDevice, GpuInfo, capability_score
from llm_router.node.runtimes import RuntimeKind
from llm_router.node.server import make_server, start_server, stop_server
from llm_router.node.settings import SimNodeSettings
from llm_router.node.state import DEFAULT_MAX_CONCURRENCY
from llm_router.sim.runtime import SimConfig, SimRuntime

RUNTIME_HOST = "127.0.0.1"

# A plausible device per backend, named so the router's infer_gpu_backend agrees with it.
_SIM_DEVICES: dict[GpuBackend, GpuDevice] = {
    GpuBackend.METAL: GpuDevice(model="Apple M2 Ultra (simulated)", memory_mb=196_608),
    GpuBackend.CUDA: GpuDevice(model="NVIDIA H100 80GB HBM3 (simulated)", memory_mb=81_559),
    GpuBackend.ROCM: GpuDevice(model="AMD Instinct MI300X (simulated)", memory_mb=196_608),
    GpuBackend.DIRECTML: GpuDevice(model="DirectML Radeon RX 7900 (simulated)", memory_mb=24_576),
}


def simulated_gpu(backend: GpuBackend) -> GpuInfo:
    device = _SIM_DEVICES.get(backend)
    if device is None:
        return GpuInfo(backend=backend)
    return GpuInfo(
        backend=backend,
        devices=(device,),
        capability_score=capability_score([device], "9.0" if backend is GpuBackend.CUDA else None),
        compute_capability="9.0" if backend is GpuBackend.CUDA else None,
    )


def sim_config(settings: SimNodeSettings) -> SimConfig:
    return SimConfig(
        node_name=settings.machine_name,
        models=tuple(settings.models),
        ttft_ms=settings.ttft_ms,
        tokens_per_s=settings.tokens_per_s,
        max_concurrency=settings.max_concurrency or DEFAULT_MAX_CONCURRENCY,
        max_tokens_default=settings.max_tokens_default,
        fail_mode=settings.fail_mode,
        fail_rate=settings.fail_rate,
        fail_after_n=settings.fail_after_n,
        refuse_families=frozenset(
            f.strip() for f in settings.refuse_families.split(",") if f.strip()
        ),
    )


async def run_sim_node(settings: SimNodeSettings, *, stop: asyncio.Event | None = None) -> int:
    """Run a simulated node until ``stop`` is set or SIGTERM/SIGINT; returns the exit code."""
    catalog = load_catalog(settings.catalog) if settings.catalog else []
    runtime = SimRuntime(sim_config(settings))
    runtime_server = make_server(runtime, RUNTIME_HOST, settings.runtime_port, settings.log_level)
    runtime_task = await start_server(runtime_server)
    try:
        return await run_agent(
            settings,
            f"http://{RUNTIME_HOST}:{settings.runtime_port}",
            simulated_gpu(settings.gpu_backend),
            catalog,
            stop=stop,
            runtime_version=f"llm-router-sim/{__version__}",
            runtime_kind=RuntimeKind.OPENAI,
        )
    finally:
        await stop_server(runtime_server, runtime_task)
