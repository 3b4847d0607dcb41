"""Run the router on uvicorn (uvloop + httptools): one replica in this process, or
``--workers N`` replicas in worker processes on one port (see ``workers``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from types import FrameType

import uvicorn
from litestar import Litestar

from llm_router.app import create_app
from llm_router.auth import startup_problems
from llm_router.edge_limits import EdgeLimits, LimitedHttpTools
from llm_router.fleet import Fleet
from llm_router.observability.logs import UVICORN_LOG_CONFIG
from llm_router.observability.worker_metrics import WorkerSlot
from llm_router.routing.node_hop import NodeTLSConfigError, node_ssl_context
from llm_router.settings import RouterSettings
from llm_router.state.connect import StoreUrlError, open_store
from llm_router.workers import RETIRE_SIGNAL, Beat, Supervisor, bind, stop_with_parent

log = logging.getLogger("llm_router")

_EMBEDDED_BANNER = """
=====================================================================
 llm-router is running on the EMBEDDED in-process store.
 Fleet state lives in this process only: run ONE replica, and expect
 it to be lost on restart. Set LLM_ROUTER_REDIS_URL for production.
=====================================================================
"""


#: How long a retiring worker keeps reading the connections it accepted before it stopped
#: accepting, before its shutdown closes the idle ones (their requests are in by then).
RETIRE_GRACE_S = 1.0


class _RouterServer(uvicorn.Server):
    """uvicorn, plus: on SIGTERM/SIGINT stop taking work before the connections drain.

    uvicorn stops accepting at once and waits for open requests; marking the fleet as
    shutting down makes queued requests hand back a 503 with Retry-After instead of
    holding the shutdown for up to the queue timeout, and makes /readyz fail.
    """

    def __init__(
        self, config: uvicorn.Config, fleet: Fleet, serving: str = "", beat: Beat | None = None
    ) -> None:
        super().__init__(config)
        self._fleet = fleet
        self._serving = serving
        self._beat = beat
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._loop = asyncio.get_running_loop()
        if not self.started:
            return
        if self._serving:
            log.info("%s", self._serving)
        if self._beat is not None:
            self._beat.start()  # the supervisor's sign that this worker serves

    def retire(self) -> None:
        """Leave the port to the other workers (a reload): stop accepting and finish every
        request held, queued ones included. Unlike SIGTERM nothing is refused and
        readiness never fails: the port stays ready through the others.

        uvicorn's shutdown closes every connection that has no request in progress right
        after it stops accepting, so a connection accepted a moment before, whose request
        is still in the socket buffer, would be closed unanswered. Retiring stops accepting
        first and starts the shutdown ``RETIRE_GRACE_S`` later, once such requests are in.
        """
        loop = self._loop
        if loop is None:  # not serving yet: nothing accepted to lose
            self.should_exit = True
            return
        loop.call_soon_threadsafe(self._stop_accepting, loop)

    def _stop_accepting(self, loop: asyncio.AbstractEventLoop) -> None:
        for server in self.servers:
            server.close()
        loop.call_later(RETIRE_GRACE_S, setattr, self, "should_exit", True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._fleet.begin_shutdown()
        super().handle_exit(sig, frame)
        # uvicorn raises a caught signal again once it has shut down, so the process would
        # die by it (143) after a clean drain; a drained replica exits 0 instead.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


def serve(settings: RouterSettings) -> int:
    problems = startup_problems(settings)
    try:
        node_ssl_context(settings)
    except NodeTLSConfigError as exc:
        problems.append(str(exc))
    if settings.workers > 1 and settings.embedded:
        problems.append(_EMBEDDED_WORKERS)
    if problems:
        for problem in problems:
            log.error("llm-router: refusing to start: %s", problem)
        return 2
    if settings.embedded:
        log.warning(_EMBEDDED_BANNER)
    elif settings.auth_disabled:
        log.warning("AUTHENTICATION IS DISABLED: any client may register nodes and administer")
    if settings.workers == 1:
        return _serve_in_this_process(settings)
    return _serve_with_workers(settings)


_EMBEDDED_WORKERS = (
    "workers > 1 needs a Redis URL (LLM_ROUTER_REDIS_URL): the embedded store lives inside "
    "one process, so each worker would hold a fleet of its own and nodes, leases and queues "
    "would not be shared"
)


def _serve_in_this_process(settings: RouterSettings) -> int:
    try:
        app = create_app(settings)
    except StoreUrlError as exc:
        sys.stderr.write(f"llm-router: refusing to start: {exc}\n")
        return 2
    # The description never carries a credential (see state.connect.redact_url).
    log.info("state store: %s", app.state.fleet.store.description)
    log.info("serving on %s:%d with 1 worker process", settings.host, settings.port)
    # SIGHUP reloads a supervisor's workers; one process has none, and the signal's default
    # action would end it without draining.
    signal.signal(signal.SIGHUP, _nothing_to_reload)
    _RouterServer(_uvicorn_config(settings, app), app.state.fleet).run()
    return 0


def _nothing_to_reload(_sig: int, _frame: FrameType | None) -> None:
    log.warning("SIGHUP: nothing to reload in a single process (that needs --workers 2 or more)")


def _serve_with_workers(settings: RouterSettings) -> int:
    """The supervisor: checks what every worker would fail on, binds, starts the workers."""
    try:
        store = open_store(settings.redis_url, timeout_s=settings.redis_socket_timeout_s)
    except StoreUrlError as exc:
        sys.stderr.write(f"llm-router: refusing to start: {exc}\n")
        return 2
    asyncio.run(store.close())  # never connected: the parent holds no Redis connection
    log.info("state store: %s", store.description)
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        log.error("llm-router: cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return 1
    with sock:
        return Supervisor(settings, sock, run_worker).run()


def run_worker(settings: RouterSettings, slot: WorkerSlot, sock: socket.socket, beat: Beat) -> None:
    """One worker process: a whole replica serving the socket its supervisor bound."""
    from llm_router.cli import setup_logging_and_tracing

    # SIGHUP is the supervisor's (a reload); a hangup sent to the whole process group
    # must not end the workers with it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup_logging_and_tracing(settings, "llm-router")
    stop_with_parent()
    app = create_app(settings, worker=slot)
    fleet: Fleet = app.state.fleet
    serving = f"worker {slot.index}: pid {os.getpid()}, replica {fleet.telemetry.replica}, serving"
    server = _RouterServer(_uvicorn_config(settings, app), fleet, serving, beat)
    signal.signal(RETIRE_SIGNAL, lambda _sig, _frame: server.retire())
    server.run(sockets=[sock])


def _uvicorn_config(settings: RouterSettings, app: Litestar) -> uvicorn.Config:
    return uvicorn.Config(
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
