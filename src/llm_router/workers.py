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
- A worker can also stop answering without exiting: a blocking call or a deadlock stops
  its event loop while it keeps its accepted connections. Each worker's loop writes the
  monotonic clock (system-wide on Linux, so comparable between processes) into a shared
  double once a second (``Beat``); a worker whose beat is older than
  ``worker_hang_timeout_s`` is SIGKILLed and started again under its number. A beat needs
  nothing from the worker but its loop turning, so a hung worker cannot fake one.
- SIGHUP replaces the workers one at a time, each only once its successor serves (its
  first beat comes after its server is listening): the port never lacks a worker. The one
  replaced is told to *retire* (SIGUSR1): stop accepting and finish everything it holds,
  queued requests included, without refusing any, since the port stays ready through the
  others. The next worker is replaced once the retired one has exited, so at most one
  process more than ``workers`` runs. A successor that exits or never serves stops the
  reload and leaves the running workers serving.
- SIGTERM or SIGINT to the parent closes its copy of the socket and passes the signal to
  every worker; each drains as a single replica does (readiness fails, queued requests
  are handed back, in-flight requests finish). The parent exits 0 once all have exited
  cleanly. A worker whose parent disappears drains and exits too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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

from llm_router.observability.worker_metrics import SupervisorMetrics, WorkerSlot
from llm_router.settings import WORKER_BEAT_S, RouterSettings

log = logging.getLogger("llm_router")

#: A worker that dies younger than this is restarted after a growing pause.
_YOUNG_DEATH_S = 10.0
_RESTART_PAUSES_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
#: Beyond the drain timeout, how long the parent waits before it kills a stuck worker.
_STOP_MARGIN_S = 10.0
#: How long a reload waits for a successor to serve (several starts on a busy machine).
_SUCCESSOR_READY_S = 120.0
#: Tells a worker to leave the port to the others (``serve.run_worker``).
RETIRE_SIGNAL = signal.SIGUSR1

#: uvicorn's default listen backlog.
_BACKLOG = 2048


@dataclass
class Beat:
    """A worker's liveness: when its event loop last ran, on the monotonic clock.

    One double in shared memory without a lock: a worker SIGKILLed while holding a lock
    would leave the supervisor waiting on it forever, and an aligned double is written and
    read whole. Zero until the worker serves.
    """

    cell: ctypes.c_double

    def start(self) -> None:
        """In the worker, once it serves: beat from its running loop as long as it runs."""
        loop = asyncio.get_running_loop()

        def beat() -> None:
            self.cell.value = time.monotonic()
            loop.call_later(WORKER_BEAT_S, beat)

        beat()

    def age(self, now: float) -> float | None:
        """Seconds since the last beat; None before the first (the worker is starting)."""
        stamp = float(self.cell.value)
        return None if stamp == 0.0 else now - stamp


WorkerMain = Callable[[RouterSettings, WorkerSlot, socket.socket, Beat], None]


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
    beat: Beat
    #: Deaths in a row, each within ``_YOUNG_DEATH_S`` of its start.
    deaths: int = 0
    #: Set once it has died: when to start its replacement.
    restart_at: float | None = None
    #: Killed for a stuck loop (so its death is counted as a hang, once).
    hung: bool = False
    #: Set once it is told to retire: when it is killed if it has not left.
    retire_by: float | None = None


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
    _metrics: SupervisorMetrics | None = None
    _context: multiprocessing.context.SpawnContext = field(
        default_factory=lambda: multiprocessing.get_context("spawn")
    )
    _generations: dict[int, int] = field(default_factory=dict)
    #: Set by SIGHUP; the main loop turns it into ``_reload`` (a handler only flags).
    _reload_asked: bool = False
    #: Worker numbers still to replace in this reload, in order.
    _reload: list[int] = field(default_factory=list)
    #: The process starting to take over a number; at most one at a time.
    _successor: _Worker | None = None
    #: Replaced workers finishing what they hold.
    _retiring: list[_Worker] = field(default_factory=list)

    def run(self) -> int:
        with tempfile.TemporaryDirectory(prefix="llm-router-workers-") as shared:
            self._shared_dir = shared
            self._metrics = SupervisorMetrics(shared, self.settings.workers)
            return self._run()

    def _run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_reload)
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

    def _spawn(self, index: int, deaths: int) -> _Worker:
        generation = self._generations.get(index, -1) + 1
        self._generations[index] = generation
        beat = Beat(self._context.RawValue(ctypes.c_double, 0.0))
        process = self._context.Process(
            target=self.target,
            args=(self.settings, WorkerSlot(index, self._shared_dir, generation), self.sock, beat),
            name=f"llm-router-worker-{index}",
        )
        process.start()
        return _Worker(index, process, time.monotonic(), beat, deaths)

    def _start(self, index: int, deaths: int) -> None:
        self._workers[index] = self._spawn(index, deaths)

    def _count(self, index: int, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.count(index, reason)

    def _watched(self) -> dict[int, _Worker]:
        """Every process still running, by the sentinel that says it has ended."""
        running = [w for w in self._workers.values() if w.restart_at is None]
        running += self._retiring
        if self._successor is not None:
            running.append(self._successor)
        return {w.process.sentinel: w for w in running}

    def _watch(self) -> None:
        """Wait for a worker to exit (or a signal, or a restart to fall due, or a second to
        pass); then kill hung workers, start the replacements that are due and move a
        reload on. A pause for one worker delays no other's restart."""
        watched = self._watched()
        due = [w.restart_at for w in self._workers.values() if w.restart_at is not None]
        timeout = max(0.0, min([1.0, *(at - time.monotonic() for at in due)]))
        for ready in wait(list(watched), timeout=timeout):
            if self._stopping:
                return
            self._ended(watched[cast(int, ready)])
        if self._stopping:
            return
        now = time.monotonic()
        self._kill_hung(now)
        for worker in list(self._workers.values()):
            if worker.restart_at is not None and worker.restart_at <= now:
                self._start(worker.index, worker.deaths)
        self._move_reload(now)

    def _ended(self, worker: _Worker) -> None:
        if worker is self._successor:
            self._successor_failed(worker)
        elif worker in self._retiring:
            self._retired(worker)
        else:
            self._bury(worker)

    def _bury(self, dead: _Worker) -> None:
        dead.process.join()
        lived = time.monotonic() - dead.started
        dead.deaths = dead.deaths + 1 if lived < _YOUNG_DEATH_S else 0
        pause = _RESTART_PAUSES_S[min(dead.deaths, len(_RESTART_PAUSES_S) - 1)]
        dead.restart_at = time.monotonic() + pause
        self._count(dead.index, "hung" if dead.hung else "exited")
        log.warning(
            "worker %d (pid %s) exited with %s after %.1fs; starting it again%s",
            dead.index,
            dead.process.pid,
            _exit_text(dead.process.exitcode),
            lived,
            f" in {pause:g}s" if pause else "",
        )

    def _kill_hung(self, now: float) -> None:
        bound = self.settings.worker_hang_timeout_s
        if not bound:
            return
        for worker in self._workers.values():
            age = worker.beat.age(now)
            if worker.restart_at is not None or worker.hung or age is None or age <= bound:
                continue
            worker.hung = True
            log.error(
                "worker %d (pid %s) is hung: its event loop has not run for %.1fs (bound "
                "%gs); killing it and starting another",
                worker.index,
                worker.process.pid,
                age,
                bound,
            )
            worker.process.kill()

    def _on_reload(self, _sig: int, _frame: FrameType | None) -> None:
        if not self._stopping:
            self._reload_asked = True

    def _move_reload(self, now: float) -> None:
        """One step of a reload: start a successor, hand its number over once it serves,
        and start the next only once the worker it replaced has left."""
        if self._reload_asked:
            # Asked again mid-reload: every worker is replaced again, so each one ends up
            # started after the last SIGHUP.
            self._reload_asked = False
            self._reload = sorted(self._workers)
            log.info("SIGHUP: replacing the %d workers one at a time", len(self._reload))
        for late in self._retiring:
            if late.retire_by is not None and late.retire_by <= now and not late.hung:
                log.error(
                    "worker %d (pid %s) did not retire in time; killing it",
                    late.index,
                    late.process.pid,
                )
                late.hung = True
                late.process.kill()
        if self._successor is not None:
            self._hand_over(self._successor, now)
        elif self._reload and not self._retiring:
            self._successor = self._spawn(self._reload.pop(0), deaths=0)

    def _hand_over(self, new: _Worker, now: float) -> None:
        if new.beat.age(now) is None:
            if now - new.started > _SUCCESSOR_READY_S:
                log.error(
                    "reload stopped: the successor of worker %d (pid %s) did not serve within "
                    "%gs; the running workers keep serving",
                    new.index,
                    new.process.pid,
                    _SUCCESSOR_READY_S,
                )
                new.process.kill()
                new.process.join()
                self._abandon_reload()
            return
        self._successor = None
        old = self._workers[new.index]
        self._workers[new.index] = new
        self._count(new.index, "reload")
        log.info(
            "worker %d replaced: pid %s serves; pid %s retires once its requests finish",
            new.index,
            new.process.pid,
            old.process.pid,
        )
        if old.restart_at is None and old.process.pid is not None:
            old.retire_by = now + self.settings.shutdown_timeout_s + _STOP_MARGIN_S
            self._retiring.append(old)
            with contextlib.suppress(ProcessLookupError):
                os.kill(old.process.pid, RETIRE_SIGNAL)

    def _successor_failed(self, new: _Worker) -> None:
        new.process.join()
        log.error(
            "reload stopped: the successor of worker %d (pid %s) exited with %s before it "
            "served (read its log lines); the running workers keep serving",
            new.index,
            new.process.pid,
            _exit_text(new.process.exitcode),
        )
        self._abandon_reload()

    def _abandon_reload(self) -> None:
        self._successor = None
        self._reload.clear()

    def _retired(self, old: _Worker) -> None:
        old.process.join()
        self._retiring.remove(old)
        code = old.process.exitcode
        level = logging.INFO if code == 0 else logging.WARNING
        log.log(
            level,
            "worker %d's old process (pid %s) left with %s",
            old.index,
            old.process.pid,
            _exit_text(code),
        )

    def _on_stop(self, sig: int, _frame: FrameType | None) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("%s: draining %d workers", signal.Signals(sig).name, len(self._workers))
        # New connections must not queue where no worker will accept them any more.
        self.sock.close()
        self._signal_all()

    def _running(self) -> list[_Worker]:
        """Every process to stop: the workers (but those that died before the signal, and
        were reported then), a successor, the retiring."""
        return [
            *(w for w in self._workers.values() if w.restart_at is None),
            *([self._successor] if self._successor is not None else []),
            *self._retiring,
        ]

    def _signal_all(self) -> None:
        for worker in self._running():
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)

    def _drain(self) -> int:
        self._signal_all()  # again: a worker started while the signal arrived missed it
        deadline = time.monotonic() + self.settings.shutdown_timeout_s + _STOP_MARGIN_S
        clean = True
        for worker in self._running():
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
