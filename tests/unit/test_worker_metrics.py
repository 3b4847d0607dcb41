"""One scrape of a ``serve --workers`` port shows every worker's series, each labelled."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from llm_router.observability.router_metrics import RouterMetrics
from llm_router.observability.worker_metrics import (
    STALE_S,
    SupervisorMetrics,
    WorkerMetrics,
    WorkerSlot,
    with_worker_label,
)


def test_the_worker_label_goes_first_in_every_sample_shape() -> None:
    assert with_worker_label("x_total 3", 2) == 'x_total{worker="2"} 3'
    assert with_worker_label('x_total{a="b c"} 3', 1) == 'x_total{worker="1",a="b c"} 3'
    assert with_worker_label('x_bucket{le="+Inf"} 7', 1) == 'x_bucket{worker="1",le="+Inf"} 7'
    assert with_worker_label("x{} 1", 4) == 'x{worker="4"} 1'


def _worker(tmp_path: Path, index: int, generation: int = 0) -> tuple[RouterMetrics, WorkerMetrics]:
    metrics = RouterMetrics()
    slot = WorkerSlot(index, str(tmp_path), generation)
    return metrics, WorkerMetrics(slot, metrics.registry)


def _requests(text: str) -> dict[str, int]:
    found = re.findall(r'^llm_router_requests_total\{worker="(\d+)",[^}]*\} (\d+)$', text, re.M)
    return {worker: int(count) for worker, count in found}


async def test_a_scrape_of_one_worker_shows_them_all_and_the_fleet_once(tmp_path: Path) -> None:
    one, w1 = _worker(tmp_path, 1)
    two, w2 = _worker(tmp_path, 2)
    one.requests.inc("m", "n", "200")
    for _ in range(3):
        two.requests.inc("m", "n", "200")
    two.attempts.observe(2)
    one.fleet_up.set(1)
    two.fleet_up.set(1)
    await w2.flush()

    text = w1.render()
    assert _requests(text) == {"1": 1, "2": 3}
    # Each family once (a valid exposition), the fleet's gauges unlabelled.
    helps = re.findall(r"^# HELP (\S+)", text, re.M)
    assert len(helps) == len(set(helps))
    assert re.findall(r"^llm_router_fleet_state_up.*$", text, re.M) == [
        "llm_router_fleet_state_up 1"
    ]
    # Histograms keep their shape per worker.
    assert 'llm_router_request_attempts_count{worker="2"} 1' in text
    assert 'llm_router_request_attempts_bucket{worker="2",le="2"} 1' in text

    # This worker's own series are fresh at every scrape; the others' as last published.
    one.requests.inc("m", "n", "200")
    two.requests.inc("m", "n", "200")
    assert _requests(w1.render()) == {"1": 2, "2": 3}


async def test_a_gone_worker_drops_out(tmp_path: Path) -> None:
    _, w1 = _worker(tmp_path, 1)
    two, w2 = _worker(tmp_path, 2)
    three, w3 = _worker(tmp_path, 3)
    two.requests.inc("m", "n", "200")
    three.requests.inc("m", "n", "200")
    await w2.flush()
    await w3.flush()
    assert set(_requests(w1.render())) == {"2", "3"}

    # Killed: its file stays, too old to count. Drained: its file is gone.
    old = time.time() - STALE_S - 1
    os.utime(tmp_path / "2.0.json", (old, old))
    await w3.stop()
    assert _requests(w1.render()) == {}
    assert not (tmp_path / "3.0.json").exists()


async def test_a_worker_and_its_successor_never_touch_each_others_file(tmp_path: Path) -> None:
    """A reload runs a number's old and new process side by side for a while."""
    _, w1 = _worker(tmp_path, 1)
    old, w2_old = _worker(tmp_path, 2, generation=0)
    new, w2_new = _worker(tmp_path, 2, generation=1)
    for _ in range(5):
        old.requests.inc("m", "n", "200")
    new.requests.inc("m", "n", "200")
    await w2_old.flush()
    await w2_new.flush()
    # The newest generation stands for the number, once.
    assert _requests(w1.render()) == {"2": 1}
    # Either process of number 2 shows its own series, and never the other's as well.
    assert _requests(w2_old.render()) == {"2": 5}
    assert _requests(w2_new.render()) == {"2": 1}
    # The old one leaves: its file goes, the successor's stays.
    await w2_old.stop()
    assert (tmp_path / "2.1.json").exists()
    assert _requests(w1.render()) == {"2": 1}


async def test_the_supervisors_counters_reach_every_scrape_once(tmp_path: Path) -> None:
    _, w1 = _worker(tmp_path, 1)
    _, w2 = _worker(tmp_path, 2)
    assert "llm_router_worker_restarts_total" not in w1.render()  # no supervisor yet
    supervisor = SupervisorMetrics(str(tmp_path), workers=2)
    supervisor.count(2, "hung")
    for text in (w1.render(), w2.render()):
        samples = re.findall(r"^llm_router_worker_restarts_total(\S*) (\d+)$", text, re.M)
        assert dict(samples) == {
            f'{{worker="{w}",reason="{r}"}}': "1" if (w, r) == ("2", "hung") else "0"
            for w in ("1", "2")
            for r in ("exited", "hung", "reload")
        }
        assert text.count("# TYPE llm_router_worker_restarts_total counter") == 1
