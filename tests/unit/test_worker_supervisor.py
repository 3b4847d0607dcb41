"""The ``serve --workers`` supervisor with real spawned processes (no server in them).

The workers here are small stand-ins that do what the supervisor sees of a real one:
exit, beat from an event loop (or stop beating because that loop is blocked), retire on
``RETIRE_SIGNAL``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest
from pydantic import ValidationError

from llm_router.observability.worker_metrics import SUPERVISOR_FILE, SupervisorMetrics, WorkerSlot
from llm_router.settings import RouterSettings
from llm_router.workers import RETIRE_SIGNAL, Beat, Supervisor, bind

HANG_S = 3.0


def one_dies_young(
    settings: RouterSettings, slot: WorkerSlot, sock: socket.socket, beat: Beat
) -> None:
    """Worker 1 fails at once, every time; worker 2 keeps running."""
    if slot.index == 1:
        raise SystemExit(7)
    time.sleep(120)


async def _serve(beat: Beat, block_after_s: float | None = None) -> None:
    """Beat like a serving worker; retire (exit 0) on the signal; with ``block_after_s``,
    block the loop the way a synchronous call would."""
    loop = asyncio.get_running_loop()
    leave = asyncio.Event()
    loop.add_signal_handler(RETIRE_SIGNAL, leave.set)
    beat.start()
    if block_after_s is not None:
        await asyncio.sleep(block_after_s)
        time.sleep(300)  # noqa: ASYNC251 - the hang this stands in for
    await leave.wait()


def first_hangs(
    settings: RouterSettings, slot: WorkerSlot, sock: socket.socket, beat: Beat
) -> None:
    """Worker 1's first process serves a moment, then its loop blocks; all others serve."""
    hangs = slot.index == 1 and slot.generation == 0
    asyncio.run(_serve(beat, block_after_s=1.5 if hangs else None))


def serves(settings: RouterSettings, slot: WorkerSlot, sock: socket.socket, beat: Beat) -> None:
    asyncio.run(_serve(beat))


def successors_fail(
    settings: RouterSettings, slot: WorkerSlot, sock: socket.socket, beat: Beat
) -> None:
    """The first generation serves; any later one fails before serving (a bad file)."""
    if slot.generation > 0:
        raise SystemExit(3)
    asyncio.run(_serve(beat))


@pytest.fixture
def supervisor(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Supervisor]:
    """Two workers running ``one_dies_young``, or the target a test passes as its param."""
    settings = RouterSettings(
        redis_url="redis://127.0.0.1:1/0",
        workers=2,
        port=1,
        worker_hang_timeout_s=HANG_S,
        shutdown_timeout_s=5,
    )
    with bind("127.0.0.1", 0) as sock:
        made = Supervisor(settings, sock, getattr(request, "param", one_dies_young))
        made._shared_dir = str(tmp_path)
        made._metrics = SupervisorMetrics(str(tmp_path), settings.workers)
        try:
            yield made
        finally:
            for worker in made._running():
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


def restarts(tmp_path: Path) -> dict[tuple[str, str], float]:
    """(worker, reason) → count, as a scrape would show the supervisor's counter."""
    family = json.loads((tmp_path / SUPERVISOR_FILE).read_text())[
        "llm_router_worker_restarts_total"
    ]
    found: dict[tuple[str, str], float] = {}
    for line in family[2:]:
        labels, value = line.rsplit(" ", 1)
        worker = labels.split('worker="', 1)[1].split('"', 1)[0]
        reason = labels.split('reason="', 1)[1].split('"', 1)[0]
        found[(worker, reason)] = float(value)
    return found


def serving(supervisor: Supervisor) -> bool:
    return all(w.beat.age(time.monotonic()) is not None for w in supervisor._workers.values())


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="llm_router")
    return caplog


def start_both(supervisor: Supervisor) -> dict[int, BaseProcess]:
    supervisor._start(1, deaths=0)
    supervisor._start(2, deaths=0)
    return {i: w.process for i, w in supervisor._workers.items()}


def reload_once_serving(supervisor: Supervisor) -> dict[int, BaseProcess]:
    """Start both workers and, once they serve, ask for a reload as SIGHUP does (the
    handler only flags); the processes it is to replace."""
    old = start_both(supervisor)
    watch_until(supervisor, lambda: serving(supervisor), "both to serve")
    supervisor._on_reload(signal.SIGHUP, None)
    return old


@pytest.mark.parametrize("supervisor", [first_hangs], indirect=True)
def test_a_worker_whose_loop_stops_is_killed_and_replaced_and_the_healthy_one_is_not(
    supervisor: Supervisor, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    hung, healthy = start_both(supervisor).values()
    watch_until(supervisor, lambda: supervisor._workers[1].process is not hung, "a restart")
    # Killed, not left to exit: the hung loop would never have ended by itself.
    assert hung.exitcode == -signal.SIGKILL
    said = [r.getMessage() for r in logs.records if "is hung" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith(f"worker 1 (pid {hung.pid}) is hung: its event loop has not run for ")
    waited = float(said[0].split("not run for ", 1)[1].split("s", 1)[0])
    assert waited >= HANG_S  # logged to a tenth of a second
    # The replacement, under the same number, serves; it and the healthy worker beat on
    # past several hang bounds without being touched.
    watch_until(supervisor, lambda: serving(supervisor), "the replacement to serve")
    replacement = supervisor._workers[1].process
    settle = time.monotonic() + 2 * HANG_S
    watch_until(supervisor, lambda: time.monotonic() > settle, "a quiet spell")
    assert supervisor._workers[1].process is replacement and replacement.is_alive()
    assert supervisor._workers[2].process is healthy and healthy.is_alive()
    counts = restarts(tmp_path)
    assert counts[("1", "hung")] == 1 and counts[("1", "exited")] == 0
    assert counts[("2", "hung")] == 0 and counts[("2", "exited")] == 0


@pytest.mark.parametrize("supervisor", [first_hangs], indirect=True)
def test_no_hang_bound_when_it_is_off(supervisor: Supervisor) -> None:
    supervisor.settings = supervisor.settings.model_copy(update={"worker_hang_timeout_s": 0})
    supervisor._start(1, deaths=0)
    blocked = supervisor._workers[1].process
    watch_until(supervisor, lambda: serving(supervisor), "the worker to serve")
    # Its loop is blocked from 1.5 s on; with the bound off it is left alone.
    settle = time.monotonic() + 2 * HANG_S
    watch_until(supervisor, lambda: time.monotonic() > settle, "a quiet spell")
    assert supervisor._workers[1].process is blocked and blocked.is_alive()


@pytest.mark.parametrize("supervisor", [serves], indirect=True)
def test_a_reload_replaces_every_worker_one_at_a_time_and_never_leaves_a_number_unserved(
    supervisor: Supervisor, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    old = reload_once_serving(supervisor)
    most = 0

    def replaced() -> bool:
        nonlocal most
        # Every number has a serving process at every step, and at most one extra runs.
        assert serving(supervisor)
        alive = [p for p in supervisor._watched().values() if p.process.is_alive()]
        most = max(most, len(alive))
        return (
            all(supervisor._workers[i].process is not old[i] for i in old)
            and not supervisor._retiring
        )

    watch_until(supervisor, replaced, "every worker replaced")
    assert most == 3
    # Each old process retired (exit 0, not killed), and only after its successor served.
    assert [old[i].exitcode for i in sorted(old)] == [0, 0]
    assert [supervisor._workers[i].process.is_alive() for i in sorted(old)] == [True, True]
    said = [r.getMessage() for r in logs.records if " replaced: pid " in r.getMessage()]
    assert [m.split(" ", 2)[1] for m in said] == ["1", "2"], said
    counts = restarts(tmp_path)
    assert counts[("1", "reload")] == 1 and counts[("2", "reload")] == 1


@pytest.mark.parametrize("supervisor", [successors_fail], indirect=True)
def test_a_successor_that_fails_stops_the_reload_and_the_old_workers_keep_serving(
    supervisor: Supervisor, logs: pytest.LogCaptureFixture
) -> None:
    old = reload_once_serving(supervisor)
    watch_until(
        supervisor,
        lambda: any("reload stopped" in r.getMessage() for r in logs.records),
        "the reload to stop",
    )
    stopped = [r.getMessage() for r in logs.records if "reload stopped" in r.getMessage()]
    assert "successor of worker 1" in stopped[0] and "exited with code 3" in stopped[0]
    for _ in range(3):
        supervisor._watch()
    assert {i: w.process for i, w in supervisor._workers.items()} == old
    assert all(p.is_alive() for p in old.values())
    assert supervisor._successor is None and not supervisor._reload


@pytest.mark.parametrize("bound", [0.5, 2.9, -1])
def test_a_hang_bound_shorter_than_a_few_beats_is_refused(bound: float) -> None:
    with pytest.raises(ValidationError, match="worker_hang_timeout_s"):
        RouterSettings(worker_hang_timeout_s=bound)


def test_the_hang_bound_defaults_to_30_and_0_turns_it_off() -> None:
    assert RouterSettings().worker_hang_timeout_s == 30
    assert RouterSettings(worker_hang_timeout_s=0).worker_hang_timeout_s == 0


@pytest.mark.parametrize("supervisor", [serves], indirect=True)
def test_stopping_in_the_middle_of_a_reload_stops_the_successor_too(
    supervisor: Supervisor,
) -> None:
    old = reload_once_serving(supervisor)
    watch_until(supervisor, lambda: supervisor._successor is not None, "a successor")
    successor = supervisor._successor
    assert successor is not None
    supervisor._stopping = True
    assert supervisor._drain() == 0
    assert not successor.process.is_alive()
    assert not any(p.is_alive() for p in old.values())
