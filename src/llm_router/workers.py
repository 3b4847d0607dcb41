"""``serve --workers N``: N worker processes on one listening socket, each a full replica.

The shape, and why:

- The parent binds the socket once and hands it to every worker; the kernel queues new
  connections on that one socket and whichever worker is free accepts. A worker that dies
  takes only the connections it had accepted: those still queued are accepted by the
  others. (With ``SO_REUSEPORT`` each worker would own a queue, and the connections queued
  on a dead worker's socket would be reset.)
- Workers are *spawned*, not forked: each starts a fresh interpreter and builds its own
  app, Redis connections and background tasks, so nothing (a connection pool, a tracing
  exporter's thread) is shared by accident. The parent pickles the settings it validated
  and sends the same object to every worker, so flags and environment reach all of them
  identically; no worker reads the environment again.
- The parent holds no fleet state and opens no Redis connection (it only makes a private
  directory where the workers leave their metrics for each other, so that one scrape
  shows them all: ``observability.worker_metrics``): everything a worker does
  lives in Redis under leases and tickets with deadlines, so a SIGKILLed worker loses its
  own requests and nothing else. A worker that exits while the parent is not stopping is
  started again (after a pause when it keeps dying young).
- SIGTERM or SIGINT to the parent closes its copy of the socket and passes the signal to
  every worker; each drains as a single replica does (readiness fails, queued requests
  are handed back, in-flight requests finish). The parent exits 0 once all have exited
  cleanly. A worker whose parent disappears drains and exits too.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import cast

from llm_router.observability.worker_metrics import WorkerSlot
from llm_router.settings import RouterSettings

log = logging.getLogger("llm_router")

#: A worker that dies younger than this is restarted after a growing pause.
_YOUNG_DEATH_S = 10.0
_RESTART_PAUSES_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
#: Beyond the drain timeout, how long the parent waits before it kills a stuck worker.
_STOP_MARGIN_S = 10.0

#: uvicorn's default listen backlog.
_BACKLOG = 2048

WorkerMain = Callable[[RouterSettings, WorkerSlot, socket.socket], None]


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker shares (IPv6 when the host is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening from the start: a connection made while the workers start (or while
        # the only free one restarts) waits in the queue instead of being refused.
        sock.listen(_BACKLOG)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    started: float
    #: Deaths in a row, each within ``_YOUNG_DEATH_S`` of its start.
    deaths: int = 0
    #: Set once it has died: when to start its replacement.
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Starts ``settings.workers`` processes running ``target`` and keeps them running."""

    settings: RouterSettings
    sock: socket.socket
    target: WorkerMain
    _workers: dict[int, _Worker] = field(default_factory=dict)
    _stopping: bool = False
    #: Where the workers leave their metrics for each other (``observability.worker_metrics``).
    _shared_dir: str = ""
    _context: multiprocessing.context.SpawnContext = field(
        default_factory=lambda: multiprocessing.get_context("spawn")
    )

    def run(self) -> int:
        with tempfile.TemporaryDirectory(prefix="llm-router-workers-") as shared:
            self._shared_dir = shared
            return self._run()

    def _run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for index in range(1, self.settings.workers + 1):
                self._start(index, deaths=0)
            log.info(
                "serving on %s:%d with %d worker processes (pids %s)",
                self.settings.host,
                self.settings.port,
                len(self._workers),
                ", ".join(str(w.process.pid) for w in self._workers.values()),
            )
            while not self._stopping:
                self._watch()
            return self._drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, index: int, deaths: int) -> None:
        process = self._context.Process(
            target=self.target,
            args=(self.settings, WorkerSlot(index, self._shared_dir), self.sock),
            name=f"llm-router-worker-{index}",
        )
        process.start()
        self._workers[index] = _Worker(index, process, time.monotonic(), deaths)

    def _watch(self) -> None:
        """Wait for a worker to exit (or a signal, or a restart to fall due); start the
        replacements that are due. A pause for one worker delays no other's restart."""
        alive = {w.process.sentinel: w for w in self._workers.values() if w.restart_at is None}
        due = [w.restart_at for w in self._workers.values() if w.restart_at is not None]
        timeout = max(0.0, min([1.0, *(at - time.monotonic() for at in due)]))
        for ready in wait(list(alive), timeout=timeout):
            if self._stopping:
                return
            self._bury(alive[cast(int, ready)])
        for worker in list(self._workers.values()):
            if self._stopping:
                return
            if worker.restart_at is not None and worker.restart_at <= time.monotonic():
                self._start(worker.index, worker.deaths)

    def _bury(self, dead: _Worker) -> None:
        dead.process.join()
        lived = time.monotonic() - dead.started
        dead.deaths = dead.deaths + 1 if lived < _YOUNG_DEATH_S else 0
        pause = _RESTART_PAUSES_S[min(dead.deaths, len(_RESTART_PAUSES_S) - 1)]
        dead.restart_at = time.monotonic() + pause
        log.warning(
            "worker %d (pid %s) exited with %s after %.1fs; starting it again%s",
            dead.index,
            dead.process.pid,
            _exit_text(dead.process.exitcode),
            lived,
            f" in {pause:g}s" if pause else "",
        )

    def _on_stop(self, sig: int, _frame: FrameType | None) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("%s: draining %d workers", signal.Signals(sig).name, len(self._workers))
        # New connections must not queue where no worker will accept them any more.
        self.sock.close()
        self._signal_all()

    def _signal_all(self) -> None:
        for worker in self._workers.values():
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)

    def _drain(self) -> int:
        self._signal_all()  # again: a worker started while the signal arrived missed it
        deadline = time.monotonic() + self.settings.shutdown_timeout_s + _STOP_MARGIN_S
        clean = True
        for worker in self._workers.values():
            if worker.restart_at is not None:
                continue  # died before the signal, and was reported then
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                worker.process.join()
                clean = False
            elif worker.process.exitcode not in _DRAINED:
                log.warning(
                    "worker %d exited with %s while stopping",
                    worker.index,
                    _exit_text(worker.process.exitcode),
                )
                clean = False
        return 0 if clean else 1


#: How a stopped worker ends: 0 once drained, or by the signal itself when it came before
#: the worker had installed its handlers (it was still starting and held nothing).
_DRAINED = frozenset({0, -signal.SIGTERM, -signal.SIGINT})


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def stop_with_parent() -> None:
    """In a worker: when the parent goes away (even SIGKILLed), drain and exit like on
    SIGTERM, so no orphan keeps serving a port its supervisor no longer owns."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
