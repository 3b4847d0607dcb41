"""``serve --workers 2`` under supervision, with real processes on a real Redis: a worker
whose event loop stops is killed and replaced; SIGHUP replaces every worker without the
port refusing or failing a request.

A hang is made from outside, exactly as a blocked loop looks to the supervisor: SIGSTOP
stops the worker's loop (it accepts nothing, answers nothing, writes no beat) while the
process stays alive and keeps its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from integration.conftest import open_cluster
from integration.procs import Cluster, Router, wait_until
from integration.worker_clients import (
    START_S,
    WIDE,
    WIDE_TOKENS_PER_S,
    WORKER_FLAGS,
    Workers,
    chat,
    workers_of,
)
from llm_router.gpu import GpuBackend
from llm_router.node.detect import GpuInfo
from llm_router.node.heartbeat import Heartbeat, RouterClient
from llm_router.node.settings import NodeSettings
from llm_router.node.state import Inventory, NodeState
from llm_router.state.keys import Keys

pytestmark = [pytest.mark.redis, pytest.mark.slow]

#: Above the shortest bound allowed, with room for a busy machine's late beats.
HANG_TIMEOUT_S = 5.0
RESTARTS = re.compile(
    r'^llm_router_worker_restarts_total\{worker="(\d+)",reason="(\w+)"\} (\d+)$', re.M
)


@dataclass
class Fleet:
    cluster: Cluster
    router: Router
    keys: Keys


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with open_cluster(redis_url) as cluster:
        # The node's heartbeats go to a replica of their own: a node agent whose kept-alive
        # connection is on the hung worker misses heartbeats until it is killed, and with
        # this suite's short node timeout the node would go offline for every worker.
        control = cluster.start_router()
        router = cluster.start_router(worker_hang_timeout_s=HANG_TIMEOUT_S, **WORKER_FLAGS)
        cluster.start_node(
            [WIDE],
            backend="cuda",
            max_concurrency=16,
            tokens_per_s=WIDE_TOKENS_PER_S,
            router=control,
        )
        cluster.wait_ready(control, timeout_s=START_S)
        cluster.wait_ready(router, timeout_s=START_S)
        cluster.wait_all()
        wait_until(lambda: len(workers_of(router)) == 2, START_S, "both workers to serve")
        yield Fleet(cluster, router, Keys(cluster.key_prefix))


@pytest.fixture
async def workers(fleet: Fleet) -> AsyncIterator[Workers]:
    store = aioredis.from_url(fleet.cluster.redis_url)
    sorted_clients = Workers(fleet.router, store, fleet.keys.decisions)
    try:
        yield sorted_clients
    finally:
        await sorted_clients.close()
        await store.aclose()


@dataclass
class Tally:
    """What a stream of requests got: every status, every transport error."""

    statuses: list[int] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


async def keep_sending(
    client: httpx.AsyncClient, router: Router, stop: asyncio.Event, tally: Tally
) -> None:
    while not stop.is_set():
        try:
            tally.statuses.append((await chat(client, router, WIDE, max_tokens=8)).status_code)
        except httpx.HTTPError as exc:
            tally.errors.append(exc)


def answered(tallies: list[Tally]) -> int:
    return sum(len(t.statuses) for t in tallies)


async def until_answered(tallies: list[Tally], count: int) -> None:
    await asyncio.to_thread(wait_until, lambda: answered(tallies) >= count, 60, f"{count} answers")


def restarts(router: Router) -> dict[tuple[str, str], int]:
    """(worker, reason) → the supervisor's count, from one scrape on a new connection."""
    text = httpx.get(f"{router.url}/metrics", timeout=10).text
    return {(w, r): int(n) for w, r, n in RESTARTS.findall(text)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_worker_whose_loop_stops_is_killed_and_replaced_and_a_busy_one_is_not(
    fleet: Fleet, workers: Workers
) -> None:
    router = fleet.router
    await workers.sort(per_worker=2)
    victim, survivor = workers.names()
    index = victim.rsplit("/w", 1)[1]
    pids = workers_of(router)
    counted = await asyncio.to_thread(restarts, router)

    # The survivor is kept busy the whole time: a loop full of work still beats.
    stop, busy = asyncio.Event(), Tally()
    load = [
        asyncio.create_task(keep_sending(c, router, stop, busy))
        for c in workers.clients[survivor][:2]
    ]
    os.kill(pids[victim], signal.SIGSTOP)
    try:
        # Sent on the stopped worker's own connection: nothing reads it until the
        # supervisor kills the worker, which cuts the connection (long before the client's
        # own 30 s timeout would).
        with pytest.raises(httpx.TransportError) as cut:
            await chat(workers.clients[victim][0], router, WIDE)
        assert not isinstance(cut.value, httpx.TimeoutException), repr(cut.value)
    finally:
        if alive(pids[victim]):
            os.kill(pids[victim], signal.SIGCONT)

    # Replaced under the same number (a new pid serving as the same replica name).
    await asyncio.to_thread(
        wait_until,
        lambda: workers_of(router)[victim] != pids[victim],
        START_S,
        "the hung worker's replacement to serve",
    )
    log = router.proc.log_path.read_text()
    said = re.search(
        rf"worker {index} \(pid {pids[victim]}\) is hung: its event loop has not run for "
        r"([\d.]+)s \(bound 5s\); killing it and starting another",
        log,
    )
    assert said is not None, router.proc.log_tail()
    assert float(said.group(1)) >= HANG_TIMEOUT_S
    assert f"worker {index} (pid {pids[victim]}) exited with signal SIGKILL" in log

    # Requests through the port succeed again: on new connections, whichever worker
    # takes them, and on the cut client's new connection.
    for _ in range(6):
        async with httpx.AsyncClient(timeout=30) as fresh:
            assert (await chat(fresh, router, WIDE)).status_code == 200
    assert (await chat(workers.clients[victim][0], router, WIDE)).status_code == 200

    stop.set()
    await asyncio.gather(*load)
    assert busy.errors == [] and busy.statuses, busy
    assert set(busy.statuses) == {200}
    assert workers_of(router)[survivor] == pids[survivor] and alive(pids[survivor])
    assert router.proc.alive
    now = await asyncio.to_thread(restarts, router)
    other = survivor.rsplit("/w", 1)[1]
    assert now[(index, "hung")] == counted[(index, "hung")] + 1, now
    assert now[(other, "hung")] == counted[(other, "hung")], now


async def test_sighup_replaces_every_worker_without_refusing_or_failing_a_request(
    fleet: Fleet,
) -> None:
    router = fleet.router
    await asyncio.to_thread(
        wait_until, lambda: len(workers_of(router)) == 2, START_S, "both workers to serve"
    )
    before = workers_of(router)
    counted = await asyncio.to_thread(restarts, router)
    parent = router.proc.process.pid

    stop = asyncio.Event()
    # A new connection for every request (a refused connect would show here) ...
    fresh = [
        httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
        for _ in range(3)
    ]
    tallies = [Tally() for _ in fresh]
    load = [
        asyncio.create_task(keep_sending(c, router, stop, t))
        for c, t in zip(fresh, tallies, strict=True)
    ]
    # ... and the official SDK on its kept-alive connections, as its users run it.
    sdk = openai.AsyncOpenAI(base_url=router.api_base, api_key="x")
    sdk_replies: list[str] = []

    async def sdk_loop() -> None:
        while not stop.is_set():
            reply = await sdk.chat.completions.create(
                model=WIDE, messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )
            sdk_replies.append(reply.choices[0].message.content or "")

    load.append(asyncio.create_task(sdk_loop()))
    try:
        await until_answered(tallies, 20)  # the load is flowing
        router.proc.process.send_signal(signal.SIGHUP)

        def every_old_worker_left() -> bool:
            now, log = workers_of(router), router.proc.log_path.read_text()
            return all(now[name] != pid for name, pid in before.items()) and all(
                f"(pid {pid}) left with code 0" in log for pid in before.values()
            )

        await asyncio.to_thread(wait_until, every_old_worker_left, 4 * START_S, "the reload")
        await until_answered(tallies, answered(tallies) + 20)  # and the new workers serve
    finally:
        stop.set()
        await asyncio.gather(*load)
        for client in fresh:
            await client.aclose()
        await sdk.close()

    for tally in tallies:
        assert tally.errors == [], tally.errors[:3]
        assert set(tally.statuses) == {200}, tally.statuses
    assert sdk_replies and all(sdk_replies)
    assert router.proc.alive and router.proc.process.pid == parent
    log = router.proc.log_path.read_text()
    assert "SIGHUP: replacing the 2 workers one at a time" in log
    now = await asyncio.to_thread(restarts, router)
    for name in before:
        number = name.rsplit("/w", 1)[1]
        assert now[(number, "reload")] == counted[(number, "reload")] + 1, now


async def test_sighup_to_a_single_process_replica_changes_nothing(fleet: Fleet) -> None:
    router = fleet.cluster.start_router(workers=1, log_level="info")
    await asyncio.to_thread(fleet.cluster.wait_ready, router, START_S)
    router.proc.process.send_signal(signal.SIGHUP)
    said = "SIGHUP: nothing to reload in a single process"
    await asyncio.to_thread(
        wait_until, lambda: said in router.proc.log_path.read_text(), 30, "the warning"
    )
    assert router.proc.alive
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await chat(client, router, WIDE)).status_code == 200
    router.proc.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(router.proc.process.wait, 30) == 0


async def test_a_node_whose_heartbeat_connection_is_on_a_hung_worker_stays_online(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent's own heartbeat loop (in this process), its one connection on the worker
    that then stops, at the default timing (a beat every 5 s, offline after 10 s) and with
    hang detection off so the worker stays stopped: the beat waits half the interval, is
    tried again on a fresh connection the other worker takes, and the node never lapses."""
    router = fleet.cluster.start_router(
        heartbeat_interval_s=5, node_timeout_s=10, worker_hang_timeout_s=0, **WORKER_FLAGS
    )
    fleet.cluster.wait_ready(router, timeout_s=START_S)
    await asyncio.to_thread(
        wait_until, lambda: len(workers_of(router)) == 2, START_S, "both workers to serve"
    )
    store = aioredis.from_url(fleet.cluster.redis_url)
    sorted_clients = Workers(router, store, fleet.keys.decisions)
    state = NodeState(GpuInfo(backend=GpuBackend.CPU), Inventory.build(GpuBackend.CPU, []), "n")
    settings = NodeSettings(
        router_url=router.url, runtime_url="http://127.0.0.1:9", machine_name="hop-hung"
    )
    stop = asyncio.Event()
    beating: asyncio.Task[None] | None = None
    stopped: int | None = None
    caplog.set_level(logging.WARNING, logger="llm_router.node")
    try:
        await sorted_clients.sort(per_worker=1)
        victim = sorted_clients.names()[0]
        client = RouterClient(sorted_clients.clients[victim][0], router.url, None)
        agent = Heartbeat(settings, state, client)
        beating = asyncio.create_task(agent.run(stop))
        # Registered and one beat answered, both on the victim's connection.
        await asyncio.to_thread(
            wait_until, lambda: agent.heartbeats_sent >= 1, 30, "the agent's first beat"
        )
        assert agent.registration is not None
        node_id = agent.registration.node_id
        stopped = workers_of(router)[victim]
        os.kill(stopped, signal.SIGSTOP)
        # Two beats are due in the next 11 s: the one on the stopped worker, and its retry.
        seen_beats = agent.heartbeats_sent
        deadline = asyncio.get_running_loop().time() + 11
        while asyncio.get_running_loop().time() < deadline:
            seconds, micros = await store.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            alive_until = await store.zscore(fleet.keys.nodes_alive, node_id)
            assert alive_until is not None and alive_until > now_ms, (alive_until, now_ms)
            await asyncio.sleep(0.25)
        assert agent.heartbeats_sent > seen_beats, "no beat was answered while the worker hung"
        failed = [r.getMessage() for r in caplog.records if "heartbeat to" in r.getMessage()]
        assert len(failed) == 1 and "trying again in 0.5s" in failed[0], failed
    finally:
        stop.set()
        if beating is not None:
            beating.cancel()  # a beat may still be waiting on the stopped worker
            with contextlib.suppress(asyncio.CancelledError):
                await beating
        if stopped is not None and alive(stopped):
            os.kill(stopped, signal.SIGCONT)
        await sorted_clients.close()
        await store.aclose()
