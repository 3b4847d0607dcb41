"""Run one router replica on uvicorn (uvloop + httptools)."""

from __future__ import annotations

import logging
import sys
from types import FrameType

import uvicorn

from llm_router.app import create_app
from llm_router.auth import startup_problems
from llm_router.edge_limits import EdgeLimits, LimitedHttpTools
from llm_router.fleet import Fleet
from llm_router.observability.logs import UVICORN_LOG_CONFIG
from llm_router.routing.node_hop import NodeTLSConfigError, node_ssl_context
from llm_router.settings import RouterSettings
from llm_router.state.connect import StoreUrlError

log = logging.getLogger("llm_router")

_EMBEDDED_BANNER = """
=====================================================================
 llm-router is running on the EMBEDDED in-process store.
 Fleet state lives in this process only: run ONE replica, and expect
 it to be lost on restart. Set LLM_ROUTER_REDIS_URL for production.
=====================================================================
"""


class _RouterServer(uvicorn.Server):
    """uvicorn, plus: on SIGTERM/SIGINT stop taking work before the connections drain.

    uvicorn stops accepting at once and waits for open requests; marking the fleet as
    shutting down makes queued requests hand back a 503 with Retry-After instead of
    holding the shutdown for up to the queue timeout, and makes /readyz fail.
    """

    def __init__(self, config: uvicorn.Config, fleet: Fleet) -> None:
        super().__init__(config)
        self._fleet = fleet

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._fleet.begin_shutdown()
        super().handle_exit(sig, frame)


def serve(settings: RouterSettings) -> int:
    problems = startup_problems(settings)
    try:
        node_ssl_context(settings)
    except NodeTLSConfigError as exc:
        problems.append(str(exc))
    if problems:
        for problem in problems:
            log.error("llm-router: refusing to start: %s", problem)
        return 2
    if settings.embedded:
        log.warning(_EMBEDDED_BANNER)
    elif settings.auth_disabled:
        log.warning("AUTHENTICATION IS DISABLED: any client may register nodes and administer")
    try:
        app = create_app(settings)
    except StoreUrlError as exc:
        sys.stderr.write(f"llm-router: refusing to start: {exc}\n")
        return 2
    # The description never carries a credential (see state.connect.redact_url).
    log.info("state store: %s", app.state.fleet.store.description)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=LimitedHttpTools.with_limits(
            EdgeLimits(
                max_header_bytes=settings.max_header_bytes,
                header_timeout_s=settings.header_timeout_s,
                body_timeout_s=settings.body_timeout_s,
                max_connections=settings.max_connections,
            )
        ),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        lifespan="on",
        # Our JSON access log (observability) replaces uvicorn's plain-text lines.
        access_log=False,
        log_config=UVICORN_LOG_CONFIG,
        log_level=settings.log_level,
        timeout_graceful_shutdown=round(settings.shutdown_timeout_s),
        server_header=False,
    )
    _RouterServer(config, app.state.fleet).run()
    return 0
