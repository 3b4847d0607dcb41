"""The agent's heartbeat loop against a router that stops answering for a while."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import httpx
import pytest

from llm_router.gpu import GpuBackend
from llm_router.node import heartbeat as agent_heartbeat
from llm_router.node.detect import GpuInfo
from llm_router.node.heartbeat import Heartbeat, Registration, beat_timeout_s
from llm_router.node.settings import NodeSettings
from llm_router.node.state import Inventory, NodeState

INTERVAL_S = 1.0


class Router:
    """A router's node API that fails the beats a test lists (by their number, from 1)."""

    def __init__(self, failing: set[int]) -> None:
        self.failing = failing
        self.router_url = "http://router"
        self.beats: list[tuple[float, float | None]] = []  # (when, timeout it was given)
        self.enough = 0
        self.reached = asyncio.Event()

    async def register(self, body: dict[str, Any]) -> Registration:
        return Registration("n1", "nt_x", INTERVAL_S, created=True, secret="s")

    async def heartbeat(
        self, registration: Registration, body: dict[str, Any], timeout_s: float | None = None
    ) -> int:
        self.beats.append((time.monotonic(), timeout_s))
        if len(self.beats) >= self.enough:
            self.reached.set()
        if len(self.beats) in self.failing:
            raise httpx.ReadTimeout("no answer")
        return 200


async def run_until(router: Router, beats: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_heartbeat, "RETRY_FAILED_BEAT_S", 0.05)
    state = NodeState(GpuInfo(backend=GpuBackend.CPU), Inventory.build(GpuBackend.CPU, []), "n")
    settings = NodeSettings(router_url="http://router", runtime_url="http://runtime")
    loop = Heartbeat(settings, state, router)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    router.enough = beats
    try:
        await asyncio.wait_for(router.reached.wait(), 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_failed_beat_is_tried_again_soon_and_a_streak_waits_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Beat 2 fails: beat 3 follows at once. Beats 4 and 5 fail in a row: 5 follows 4 at
    # once, 6 follows 5 a whole interval later (a router that is down is not hammered).
    router = Router(failing={2, 4, 5})
    await run_until(router, 6, monkeypatch)
    when = [t for t, _ in router.beats]
    gaps = [later - earlier for earlier, later in itertools.pairwise(when)]
    assert gaps[0] >= INTERVAL_S  # after a success, the interval
    assert gaps[1] < INTERVAL_S * 0.75  # the retry after beat 2 failed
    assert gaps[2] >= INTERVAL_S  # beat 3 succeeded
    assert gaps[3] < INTERVAL_S * 0.75  # first failure of the streak
    assert gaps[4] >= INTERVAL_S  # second in a row: back to the interval


async def test_each_beat_waits_for_its_answer_well_inside_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = Router(failing=set())
    await run_until(router, 1, monkeypatch)
    assert router.beats[0][1] == beat_timeout_s(INTERVAL_S, 5.0) == 1.0
    assert beat_timeout_s(5.0, 5.0) == 2.5  # the defaults: half the 5 s interval
    assert beat_timeout_s(60.0, 5.0) == 5.0  # never longer than the control timeout
