"""Serving an ASGI app from inside an agent's own event loop, with the agent owning signals."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from llm_router.observability.logs import UVICORN_LOG_CONFIG


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM/SIGINT to its owner.

    The agent must deregister and drain before the listener goes away, so it cannot let
    uvicorn react to the signal first.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass(frozen=True)
class ServerTLS:
    """Serve https with this certificate; with ``client_ca``, require a client certificate."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            options.update(ssl_ca_certs=str(self.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return options


def make_server(
    app: Any, host: str, port: int, log_level: str = "warning", tls: ServerTLS | None = None
) -> EmbeddedServer:
    """``log_level`` is the agent's; uvicorn's own chatter only shows at debug."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=UVICORN_LOG_CONFIG,
        log_level="debug" if log_level == "debug" else "warning",
        server_header=False,
        # Routers keep pooled connections; closing them early causes needless reconnects.
        timeout_keep_alive=75,
        timeout_graceful_shutdown=5,
        **(tls.uvicorn_options() if tls is not None else {}),
    )
    return EmbeddedServer(config)


async def start_server(server: EmbeddedServer) -> asyncio.Task[None]:
    """Start serving; return once the socket listens (raise if it cannot)."""
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        with contextlib.suppress(SystemExit):
            task.result()
        config = server.config
        raise OSError(f"could not listen on {config.host}:{config.port}")
    return task


async def stop_server(server: EmbeddedServer, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    with contextlib.suppress(SystemExit, asyncio.CancelledError):
        await task
