"""The ``serve --workers`` supervisor with real spawned processes (no server in them)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llm_router.observability.worker_metrics import WorkerSlot
from llm_router.settings import RouterSettings
from llm_router.workers import Supervisor, bind


def one_dies_young(settings: RouterSettings, slot: WorkerSlot, sock: socket.socket) -> None:
    """Worker 1 fails at once, every time; worker 2 keeps running."""
    if slot.index == 1:
        raise SystemExit(7)
    time.sleep(120)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    settings = RouterSettings(redis_url="redis://127.0.0.1:1/0", workers=2, port=1)
    with bind("127.0.0.1", 0) as sock:
        made = Supervisor(settings, sock, one_dies_young)
        made._shared_dir = str(tmp_path)
        try:
            yield made
        finally:
            for worker in made._workers.values():
                worker.process.kill()
                worker.process.join()


def watch_until(supervisor: Supervisor, done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline, what
        supervisor._watch()


def test_a_worker_dying_young_is_restarted_after_a_pause_without_touching_the_other(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llm_router")
    supervisor._start(1, deaths=0)
    supervisor._start(2, deaths=0)
    steady = supervisor._workers[2].process

    first = supervisor._workers[1].process
    watch_until(supervisor, lambda: supervisor._workers[1].restart_at is not None, "a death")
    dead = supervisor._workers[1]
    assert dead.process is first and dead.process.exitcode == 7
    assert dead.deaths == 1

    # Started again once the pause is over, under the same number; each young death in a
    # row makes the next pause longer.
    watch_until(supervisor, lambda: supervisor._workers[1].process is not first, "a restart")
    watch_until(supervisor, lambda: supervisor._workers[1].deaths == 2, "a second death")
    assert supervisor._workers[2].process is steady and steady.is_alive()
    said = [r.getMessage() for r in caplog.records if "starting it again" in r.getMessage()]
    assert said[0].startswith("worker 1 ") and "exited with code 7" in said[0]
    assert said[0].endswith("starting it again in 1s"), said
    assert said[1].endswith("starting it again in 2s"), said


def test_stopping_drains_and_says_whether_every_worker_ended_cleanly(
    supervisor: Supervisor,
) -> None:
    supervisor._start(2, deaths=0)
    supervisor._stopping = True
    # The sleeping worker has no handler: SIGTERM ends it, which counts as clean (a worker
    # stopped before it could drain held nothing).
    assert supervisor._drain() == 0
    assert not supervisor._workers[2].process.is_alive()
