"""The observer's bookkeeping reads back exactly as it always has: a fixed sequence of
proxied requests through its hooks, on a fake clock, against the metrics text and the
recent-decisions list recorded in ``golden/`` (written by the straightforward implementation:
a dict per decision, label lookups per observation)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from llm_router.errors import ModelNotFound, NoCapableNodes
from llm_router.observability import observer as observer_module
from llm_router.observability.decisions import DecisionLog
from llm_router.observability.observer import Observer
from llm_router.observability.router_metrics import RouterMetrics

GOLDEN = Path(__file__).with_name("golden")
KEY = "{llmr}:decisions"


class FakeClock:
    """perf_counter and time.time both advance by a varied step per reading."""

    def __init__(self) -> None:
        self._steps = itertools.cycle((0.0003, 0.0021, 0.047, 0.00009, 0.6, 0.012, 3.1))
        self.now = 1_000.0

    def perf_counter(self) -> float:
        self.now += next(self._steps)
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.perf_counter()


@contextmanager
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    clock = FakeClock()
    monkeypatch.setattr(observer_module, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(observer_module.time, "time", clock.time)
    yield clock


def _requests(obs: Observer) -> None:
    models = ["m1", "m2", "m3", "m4"]  # more than the label cap: the last ones become other
    nodes = ["node-a", "node-b", "node-c"]
    for i in range(60):
        model, node = models[i % 4], nodes[i % 3]
        trace = obs.begin(model, f"r{i}")
        if i % 11 == 5:
            obs.failed(trace, ModelNotFound(f"The model '{model}x' does not exist"))
            continue
        if i % 13 == 7:
            obs.failed(trace, NoCapableNodes("none"))
            continue
        queued = None if i % 5 else 3.7 * i
        affinity = ("hit:none", "moved:full", "new", "")[i % 4]
        obs.leased(trace, node, queued, affinity, (f"t{i % 3}", i % 2))
        trace.sending()
        if i % 7 == 3:  # a failover to the next node
            obs.failed_attempt(trace, excluded=i % 2 == 1)
            obs.leased(trace, nodes[(i + 1) % 3], None, affinity)
            trace.sending()
        if i % 17 == 9:
            obs.failed(trace, asyncio.CancelledError())
            continue
        trace.answered(stream=i % 3 == 0)
        status = (200, 200, 200, 429, 502)[i % 5]
        obs.finish(trace, status, broken=i % 19 == 4)


async def run(monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[dict[str, Any]], Observer]:
    """The metrics text (build info left out), the decisions read back (newest first) and
    the observer."""
    redis = fakeredis.FakeAsyncRedis()
    metrics = RouterMetrics(max_models=2, max_nodes=2)
    decisions = DecisionLog(redis, KEY, metrics.decisions_dropped)
    obs = Observer(metrics, decisions, replica="replica-1")
    with fake_clock(monkeypatch):
        _requests(obs)
    await decisions.flush()
    text = "".join(
        line + "\n"
        for name, lines in metrics.registry.families()
        if name != "llm_router_build_info"
        for line in lines
    )
    return text, await decisions.recent(200), obs


async def test_metrics_text_reads_as_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    text, _, _ = await run(monkeypatch)
    assert text == (GOLDEN / "observer_metrics.txt").read_text()


async def test_recent_decisions_read_as_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    _, decisions, _ = await run(monkeypatch)
    assert decisions == json.loads((GOLDEN / "observer_decisions.json").read_text())


async def test_a_full_series_cache_starts_over_and_reads_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(observer_module, "MAX_CACHED_SERIES", 2)
    text, decisions, obs = await run(monkeypatch)
    assert len(obs._series) <= 2
    assert text == (GOLDEN / "observer_metrics.txt").read_text()
    assert decisions == json.loads((GOLDEN / "observer_decisions.json").read_text())
