"""The node agent's life: serve the node API, find the runtime's models, register,
heartbeat, and on SIGTERM leave routing, drain, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Iterator, Sequence

import httpx

from llm_router.gpu import ModelSpec
from llm_router.node.app import RuntimeProxy, create_node_app
from llm_router.node.catalog import load_catalog
from llm_router.node.detect import GpuInfo, GpuMetrics, declared_gpu, get_gpu_backend
from llm_router.node.detect import read_gpu_metrics as probe_gpu_metrics
from llm_router.node.heartbeat import Heartbeat, RouterClient
from llm_router.node.monitor import RuntimeMonitor
from llm_router.node.runtimes import RuntimeHttp, RuntimeKind, make_adapter
from llm_router.node.server import ServerTLS, make_server, start_server, stop_server
from llm_router.node.settings import AgentSettings, NodeSettings
from llm_router.node.state import Inventory, NodeState

log = logging.getLogger("llm_router.node")


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


def _quiet_http_client_logs() -> None:
    # httpx logs every request at INFO: one line per heartbeat and runtime reading.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))


def _server_tls(settings: AgentSettings) -> ServerTLS | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return ServerTLS(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def _router_verify(settings: AgentSettings) -> ssl.SSLContext | bool:
    # The same client talks to the runtime (usually plain http on loopback): a private CA
    # for the router replaces the system store for https peers, nothing else changes.
    if settings.router_ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(settings.router_ca_file))


async def run_agent(
    settings: AgentSettings,
    runtime_url: str,
    gpu: GpuInfo,
    catalog: Sequence[ModelSpec] = (),
    *,
    stop: asyncio.Event | None = None,
    runtime_version: str | None = None,
    runtime_kind: RuntimeKind = RuntimeKind.AUTO,
    runtime_api_key: str | None = None,
) -> int:
    """Run the agent in front of ``runtime_url`` until ``stop`` is set or SIGTERM/SIGINT.

    ``runtime_version`` stands in for a runtime that does not report its own.
    """
    stop = stop or asyncio.Event()
    _quiet_http_client_logs()
    state = NodeState(gpu, Inventory.build(gpu.backend, catalog), settings.machine_name)
    proxy = RuntimeProxy(
        runtime_url, state, timeout_s=settings.runtime_timeout_s, api_key=runtime_api_key
    )
    server = make_server(
        create_node_app(state, proxy),
        settings.host,
        settings.port,
        settings.log_level,
        tls=_server_tls(settings),
    )
    server_task = await start_server(server)
    log.info(
        "node API on %s://%s:%s (backend %s, runtime %s)",
        settings.scheme,
        settings.host,
        settings.port,
        gpu.backend,
        runtime_url,
    )

    async def gpu_metrics() -> GpuMetrics | None:
        return await asyncio.to_thread(probe_gpu_metrics, gpu.backend)

    with _stop_on_signals(stop):
        async with httpx.AsyncClient(
            timeout=settings.control_timeout_s, verify=_router_verify(settings)
        ) as http:
            monitor = RuntimeMonitor(
                state,
                make_adapter(runtime_kind),
                RuntimeHttp(http, runtime_url, runtime_api_key),
                catalog,
                max_concurrency=settings.max_concurrency,
                version_override=runtime_version,
            )
            heartbeat = Heartbeat(
                settings,
                state,
                RouterClient(http, settings.router_url, settings.node_key),
                refresh_runtime=monitor.refresh,
                read_gpu_metrics=gpu_metrics if gpu.gpu_available else None,
            )
            # Registered whatever the runtime says: the router then shows the node and
            # why it takes no requests, and routes to it from its first ready heartbeat.
            await monitor.refresh()
            beating = asyncio.create_task(heartbeat.run(stop))
            await stop.wait()

            log.info(
                "stopping: leaving routing, then draining %d request(s)", state.active_requests
            )
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
    return await run_agent(
        settings,
        settings.runtime_url,
        gpu,
        catalog,
        stop=stop,
        runtime_kind=settings.runtime_kind,
        runtime_api_key=settings.runtime_api_key,
    )
