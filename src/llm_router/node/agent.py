"""The node agent's life: serve the node API, find the runtime's models, register,
heartbeat, and on SIGTERM leave routing, drain, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator, Sequence

import httpx

from llm_router.gpu import ModelSpec
from llm_router.node.app import RuntimeProxy, create_node_app
from llm_router.node.catalog import load_catalog, merge_models
from llm_router.node.detect import GpuInfo, GpuMetrics, declared_gpu, get_gpu_backend
from llm_router.node.detect import read_gpu_metrics as probe_gpu_metrics
from llm_router.node.heartbeat import Heartbeat, RouterClient
from llm_router.node.runtime import RuntimeUnavailable, discover_models
from llm_router.node.server import make_server, start_server, stop_server
from llm_router.node.settings import AgentSettings, NodeSettings
from llm_router.node.state import Inventory, NodeState

log = logging.getLogger("llm_router.node")

CONTROL_TIMEOUT_S = 5.0


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (ValueError, NotImplementedError, RuntimeError):
            # Not the main thread, or a platform without loop signal handlers.
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _refresh(
    state: NodeState, http: httpx.AsyncClient, runtime_url: str, catalog: Sequence[ModelSpec]
) -> bool:
    try:
        specs = await discover_models(http, runtime_url)
    except RuntimeUnavailable as exc:
        if state.runtime_ready:
            log.warning("%s; keeping the last known model list", exc)
        return False
    inventory = Inventory.build(state.gpu.backend, merge_models(catalog, specs))
    if inventory != state.inventory or not state.runtime_ready:
        skipped = [m for m in inventory.installed if m not in inventory.executable]
        log.info(
            "backend %s: executable %s%s",
            inventory.backend,
            list(inventory.executable),
            f"; installed but not executable here {skipped}" if skipped else "",
        )
    state.inventory = inventory
    state.runtime_ready = True
    return True


async def _wait_for_runtime(
    state: NodeState,
    http: httpx.AsyncClient,
    runtime_url: str,
    catalog: Sequence[ModelSpec],
    stop: asyncio.Event,
) -> bool:
    delay = 0.2
    warned = False
    while not stop.is_set():
        if await _refresh(state, http, runtime_url, catalog):
            return True
        if not warned:
            log.warning("waiting for the runtime at %s to list its models", runtime_url)
            warned = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 5.0)
    return False


async def run_agent(
    settings: AgentSettings,
    runtime_url: str,
    gpu: GpuInfo,
    catalog: Sequence[ModelSpec] = (),
    *,
    stop: asyncio.Event | None = None,
    runtime_version: str | None = None,
) -> int:
    """Run the agent in front of ``runtime_url`` until ``stop`` is set or SIGTERM/SIGINT."""
    stop = stop or asyncio.Event()
    state = NodeState(gpu, Inventory.build(gpu.backend, catalog), settings.machine_name)
    proxy = RuntimeProxy(runtime_url, state, timeout_s=settings.runtime_timeout_s)
    server = make_server(
        create_node_app(state, proxy), settings.host, settings.port, settings.log_level
    )
    server_task = await start_server(server)
    log.info(
        "node API on http://%s:%s (backend %s, runtime %s)",
        settings.host,
        settings.port,
        gpu.backend,
        runtime_url,
    )

    async def gpu_metrics() -> GpuMetrics | None:
        return await asyncio.to_thread(probe_gpu_metrics, gpu.backend)

    with _stop_on_signals(stop):
        async with httpx.AsyncClient(timeout=CONTROL_TIMEOUT_S) as http:

            async def refresh() -> None:
                await _refresh(state, http, runtime_url, catalog)

            heartbeat = Heartbeat(
                settings,
                state,
                RouterClient(http, settings.router_url, settings.node_key),
                refresh_models=refresh,
                read_gpu_metrics=gpu_metrics if gpu.gpu_available else None,
                runtime_version=runtime_version,
            )
            beating: asyncio.Task[None] | None = None
            if await _wait_for_runtime(state, http, runtime_url, catalog, stop):
                beating = asyncio.create_task(heartbeat.run(stop))
            await stop.wait()

            log.info(
                "stopping: leaving routing, then draining %d request(s)", state.active_requests
            )
            if beating is not None:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
            # Out of routing first, so the router sends nothing new while we drain.
            await heartbeat.deregister()
        if not await state.wait_idle(settings.drain_timeout_s):
            log.warning(
                "drain timeout: %d request(s) still running after %.0fs",
                state.active_requests,
                settings.drain_timeout_s,
            )
        await stop_server(server, server_task)
    log.info("node agent stopped")
    return 0


async def run_node(settings: NodeSettings, *, stop: asyncio.Event | None = None) -> int:
    """``llm-router node``: the agent in front of a real runtime. Returns the exit code.

    Raises ``CatalogError`` (a ValueError naming the file and entry) for a bad catalog.
    """
    catalog = load_catalog(settings.catalog) if settings.catalog else []
    if settings.gpu_backend is not None:
        gpu = await asyncio.to_thread(declared_gpu, settings.gpu_backend)
    else:
        gpu = await asyncio.to_thread(get_gpu_backend)
    log.info(
        "GPU backend %s%s",
        gpu.backend,
        f" ({gpu.gpu_count} x {gpu.gpu_model})" if gpu.devices else "",
    )
    return await run_agent(settings, settings.runtime_url, gpu, catalog, stop=stop)
