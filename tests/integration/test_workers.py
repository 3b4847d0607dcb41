"""``llm-router serve --workers 2``: two worker processes on one port, on a real Redis.

Clients are sorted by the worker their one keep-alive connection landed on
(``worker_clients``), and the tests then drive each worker on purpose.

Three simulated nodes: ``wide`` (16 slots) to sort connections by worker, ``pair`` (two
slots, slow) for overfill and lease expiry, ``single`` (one slot) for queue order.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from integration.conftest import open_cluster
from integration.probes import ConcurrencyProbe
from integration.procs import Cluster, Router, SimNode, free_port, wait_until
from integration.worker_clients import (
    START_S,
    WIDE,
    WIDE_TOKENS_PER_S,
    WORKER_FLAGS,
    Workers,
    chat,
    workers_of,
)
from llm_router.observability.worker_metrics import PUBLISH_S
from llm_router.state.keys import Keys

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PAIR, SINGLE = "w-pair", "w-single"
LEASE_TTL_S = 2.0
TOKENS_PER_S = 20


def tokens_for(seconds: float) -> int:
    """``max_tokens`` that hold a slot of the ``single`` / ``pair`` nodes for ``seconds``."""
    return round(seconds * TOKENS_PER_S) + 1


class Fleet:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.router = cluster.start_router(
            lease_ttl_s=LEASE_TTL_S, queue_timeout_s=15, **WORKER_FLAGS
        )
        self.wide = cluster.start_node(
            [WIDE], backend="cuda", max_concurrency=16, tokens_per_s=WIDE_TOKENS_PER_S
        )
        self.pair: SimNode = cluster.start_node(
            [PAIR], backend="cuda", max_concurrency=2, ttft_ms=5, tokens_per_s=TOKENS_PER_S
        )
        self.single: SimNode = cluster.start_node(
            [SINGLE], backend="metal", max_concurrency=1, ttft_ms=5, tokens_per_s=TOKENS_PER_S
        )
        # Two workers importing at once on a busy machine start slower than one replica.
        cluster.wait_ready(self.router, timeout_s=START_S)
        ids = cluster.wait_all()
        self.pair_id = ids[self.pair.machine_name]
        self.single_id = ids[self.single.machine_name]
        self.keys = Keys(cluster.key_prefix)
        wait_until(lambda: len(workers_of(self.router)) == 2, START_S, "both workers to serve")


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with open_cluster(redis_url) as cluster:
        yield Fleet(cluster)


@pytest.fixture
async def store(fleet: Fleet) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(fleet.cluster.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def workers(fleet: Fleet, store: aioredis.Redis) -> AsyncIterator[Workers]:
    sorted_clients = Workers(fleet.router, store, fleet.keys.decisions)
    try:
        yield sorted_clients
    finally:
        await sorted_clients.close()


def test_the_parent_says_how_many_workers_run(fleet: Fleet) -> None:
    log = fleet.router.proc.log_path.read_text()
    assert "with 2 worker processes" in log, log
    replicas = sorted(workers_of(fleet.router))
    assert [r.rsplit("/", 1)[1] for r in replicas] == ["w1", "w2"], replicas


async def test_every_worker_serves_the_openai_sdk(fleet: Fleet, workers: Workers) -> None:
    await workers.sort(per_worker=1)
    for name in workers.names():
        sdk = openai.AsyncOpenAI(
            base_url=fleet.router.api_base,
            api_key="x",
            max_retries=0,
            http_client=workers.clients[name][0],
        )
        listed = {m.id for m in (await sdk.models.list()).data}
        assert {WIDE, PAIR, SINGLE} <= listed, (name, listed)
        raw = await sdk.chat.completions.with_raw_response.create(
            model=WIDE, messages=[{"role": "user", "content": "hello"}]
        )
        reply = raw.parse()
        assert reply.model == WIDE and reply.choices[0].message.content
        stream = await sdk.chat.completions.create(
            model=WIDE, messages=[{"role": "user", "content": "hello"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text, name
        # The request went where the connection is: this worker.
        assert (await workers.replica_of([raw.headers["x-request-id"]])) == {
            raw.headers["x-request-id"]: name
        }


def served_by_worker(router: Router, model: str) -> dict[str, int]:
    """worker → requests for ``model`` answered 200, from one scrape on a new connection."""
    text = httpx.get(f"{router.url}/metrics", timeout=5).text
    pattern = (
        rf'^llm_router_requests_total\{{worker="(\d+)",model="{model}",[^}}]*status="200"\}} (\d+)$'
    )
    counts: dict[str, int] = {}
    for worker, count in re.findall(pattern, text, re.MULTILINE):
        counts[worker] = counts.get(worker, 0) + int(count)
    return counts


async def test_one_scrape_counts_every_worker(fleet: Fleet, workers: Workers) -> None:
    await workers.sort(per_worker=1)
    a, b = workers.names()
    # Another worker's series are up to a publish period old: let the sorting requests'
    # counts reach every file, then take the highest each worker shows (counts only grow).
    await asyncio.sleep(2.5 * PUBLISH_S)
    before: dict[str, int] = {}
    for _ in range(4):
        scrape = await asyncio.to_thread(served_by_worker, fleet.router, WIDE)
        for worker, count in scrape.items():
            before[worker] = max(before.get(worker, 0), count)
    for _ in range(3):
        assert (await chat(workers.clients[a][0], fleet.router, WIDE)).status_code == 200
    assert (await chat(workers.clients[b][0], fleet.router, WIDE)).status_code == 200
    index = {name: name.rsplit("/w", 1)[1] for name in (a, b)}
    wanted = {index[a]: before.get(index[a], 0) + 3, index[b]: before.get(index[b], 0) + 1}

    def every_scrape_agrees() -> bool:
        # Four scrapes on four connections: whichever worker answers, both are counted.
        return all(served_by_worker(fleet.router, WIDE) == wanted for _ in range(4))

    await asyncio.to_thread(wait_until, every_scrape_agrees, 10, "scrapes to count both")


async def test_workers_never_overfill_a_node(fleet: Fleet, workers: Workers) -> None:
    await workers.sort(per_worker=6)
    a, b = workers.names()
    clients = [*workers.clients[a][:6], *workers.clients[b][:6]]
    # Twelve requests of ~0.4 s, six through each worker, at one node of two slots.
    async with ConcurrencyProbe(fleet.pair) as probe:
        answers = await asyncio.gather(
            *(chat(c, fleet.router, PAIR, max_tokens=tokens_for(0.4)) for c in clients)
        )
    assert [r.status_code for r in answers] == [200] * 12, [r.text[:200] for r in answers]
    assert probe.samples > 20
    assert probe.peak == 2
    replicas = await workers.replica_of([r.headers["x-request-id"] for r in answers])
    assert sorted(set(replicas.values())) == [a, b]
    assert sum(r.headers.get("x-queue-status") == "queued" for r in answers) >= 8


async def test_queue_order_holds_across_workers(
    fleet: Fleet, workers: Workers, store: aioredis.Redis
) -> None:
    await workers.sort(per_worker=3)
    a, b = workers.names()
    # The slot's holder, then four waiters alternating workers, each sent once the one
    # before it is in the queue (so arrival order is known, however busy the machine).
    order = [workers.clients[a][0], workers.clients[b][0], workers.clients[a][1]]
    order += [workers.clients[b][1], workers.clients[a][2]]
    queue = fleet.keys.queue(SINGLE)

    async def reached(key: str, count: int) -> None:
        deadline = time.monotonic() + 10
        while int(await store.zcard(key)) != count:
            assert time.monotonic() < deadline, f"{key} never held {count}"
            await asyncio.sleep(0.01)

    async with ConcurrencyProbe(fleet.single) as probe:
        sent = [asyncio.create_task(chat(order[0], fleet.router, SINGLE, max_tokens=tokens_for(3)))]
        await reached(fleet.keys.leases(fleet.single_id), 1)
        for i, client in enumerate(order[1:], start=1):
            sent.append(
                asyncio.create_task(chat(client, fleet.router, SINGLE, max_tokens=tokens_for(0.2)))
            )
            await reached(queue, i)
        answers = await asyncio.gather(*sent)
    assert [r.status_code for r in answers] == [200] * 5
    assert probe.peak == 1
    # The simulated runtime numbers replies in the order it starts them.
    started = [int(r.json()["id"].rsplit("-", 1)[1]) for r in answers]
    assert started == sorted(started), started
    assert [r.headers.get("x-queue-status") for r in answers[1:]] == ["queued"] * 4
    replicas = await workers.replica_of([r.headers["x-request-id"] for r in answers])
    assert [replicas[r.headers["x-request-id"]] for r in answers] == [a, b, a, b, a]


async def test_a_killed_worker_loses_only_its_requests_and_its_slots_come_back(
    fleet: Fleet, workers: Workers, store: aioredis.Redis
) -> None:
    await workers.sort(per_worker=2)
    doomed, survivor = workers.names()
    # The doomed worker holds both slots of ``pair``; the survivor serves ``single``.
    # Long enough to be running at the kill, short enough to end on the node before the
    # dead worker's leases expire (else the node would be busy past its free slots).
    held = [
        asyncio.create_task(chat(c, fleet.router, PAIR, max_tokens=tokens_for(1.5)))
        for c in workers.clients[doomed][:2]
    ]
    bystander = asyncio.create_task(
        chat(workers.clients[survivor][0], fleet.router, SINGLE, max_tokens=tokens_for(1.5))
    )

    async def holding(node_id: str, count: int) -> bool:
        return int(await store.zcard(fleet.keys.leases(node_id))) == count

    deadline = time.monotonic() + 10
    while not (await holding(fleet.pair_id, 2) and await holding(fleet.single_id, 1)):
        assert time.monotonic() < deadline, "the requests never all held their slots"
        await asyncio.sleep(0.02)
    doomed_pid = workers_of(fleet.router)[doomed]
    os.kill(doomed_pid, signal.SIGKILL)
    killed = time.monotonic()

    lost = await asyncio.gather(*held, return_exceptions=True)
    assert all(isinstance(r, httpx.HTTPError) for r in lost), lost
    kept = await bystander
    assert kept.status_code == 200, kept.text

    # The dead worker's leases stay in Redis until they expire; a request for ``pair``
    # through the survivor waits for that, then is served, and the node never runs more
    # than its two slots.
    async with ConcurrencyProbe(fleet.pair) as probe:
        first = await chat(workers.clients[survivor][1], fleet.router, PAIR)
        recovered_after = time.monotonic() - killed
        assert first.status_code == 200, first.text
        assert first.headers["x-queue-status"] == "queued"
        assert 0.5 < recovered_after < LEASE_TTL_S + 3.0, recovered_after
        again = await asyncio.gather(
            *(chat(c, fleet.router, PAIR) for c in workers.clients[survivor][:2] * 2)
        )
    assert [r.status_code for r in again] == [200] * 4
    assert probe.peak <= 2

    # The supervisor started the worker again, under the same name with a new pid.
    wait_until(
        lambda: workers_of(fleet.router).get(doomed, doomed_pid) != doomed_pid,
        START_S,
        "the killed worker to be started again",
    )
    assert fleet.router.proc.alive
    assert "starting it again" in fleet.router.proc.log_path.read_text()
    fleet.cluster.wait_ready(fleet.router)


async def test_sigterm_to_the_parent_drains_every_worker_and_exits_0(
    fleet: Fleet, store: aioredis.Redis
) -> None:
    router = fleet.cluster.start_router(lease_ttl_s=LEASE_TTL_S, **WORKER_FLAGS)
    fleet.cluster.wait_ready(router, timeout_s=START_S)
    wait_until(lambda: len(workers_of(router)) == 2, START_S, "both workers to serve")
    sorted_clients = Workers(router, store, fleet.keys.decisions)
    try:
        await sorted_clients.sort(per_worker=2)
        clients = [c for name in sorted_clients.names() for c in sorted_clients.clients[name][:2]]
        in_flight = [
            asyncio.create_task(chat(c, router, WIDE, max_tokens=WIDE_TOKENS_PER_S * 2))
            for c in clients
        ]
        await asyncio.sleep(0.5)  # all four are on the node by now (~2 s each there)
        assert not any(t.done() for t in in_flight)
        router.proc.process.send_signal(signal.SIGTERM)  # the parent only
        answers = await asyncio.gather(*in_flight)
        assert [r.status_code for r in answers] == [200] * 4, [r.text[:200] for r in answers]
        code = await asyncio.to_thread(router.proc.process.wait, 30)
        assert code == 0, router.proc.log_tail()
    finally:
        await sorted_clients.close()
    assert_all_gone(router)


def test_sigterm_to_a_single_process_replica_exits_0(fleet: Fleet) -> None:
    router = fleet.cluster.start_router(workers=1, log_level="info")
    fleet.cluster.wait_ready(router, timeout_s=START_S)
    assert "with 1 worker process" in router.proc.log_path.read_text()
    router.proc.process.send_signal(signal.SIGTERM)
    assert router.proc.process.wait(30) == 0, router.proc.log_tail()


def assert_all_gone(router: Router) -> None:
    """No worker outlives its parent, and nothing listens on the port any more."""
    assert not _any_alive(router)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{router.url}/healthz", timeout=2)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_workers_on_the_embedded_store_is_refused_with_2(how: str) -> None:
    args = [sys.executable, "-m", "llm_router.cli", "serve", "--port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER_")}
    if how == "flag":
        args += ["--workers", "2"]
    else:
        env["LLM_ROUTER_WORKERS"] = "2"
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "workers > 1 needs a Redis URL" in output, output
    assert "embedded store lives inside one process" in output, output


async def test_env_settings_reach_every_worker_and_workers_stop_with_their_parent(
    fleet: Fleet, store: aioredis.Redis
) -> None:
    # One setting from the environment, the rest as flags: both workers enforce it.
    router = fleet.cluster.start_router(env={"LLM_ROUTER_MAX_BODY_BYTES": "4096"}, **WORKER_FLAGS)
    fleet.cluster.wait_ready(router, timeout_s=START_S)
    wait_until(lambda: len(workers_of(router)) == 2, START_S, "both workers to serve")
    sorted_clients = Workers(router, store, fleet.keys.decisions)
    try:
        await sorted_clients.sort(per_worker=1)
        padding = "x" * 8192
        for name in sorted_clients.names():
            client = sorted_clients.clients[name][0]
            big = await chat(client, router, WIDE, user=padding)
            assert big.status_code == 413, (name, big.status_code, big.text[:200])
            small = await chat(client, router, WIDE)
            assert small.status_code == 200, (name, small.text[:200])
            replicas = await sorted_clients.replica_of([small.headers["x-request-id"]])
            assert set(replicas.values()) == {name}
    finally:
        await sorted_clients.close()
    # A supervisor killed outright leaves no worker serving the port on its own.
    os.kill(router.proc.process.pid, signal.SIGKILL)
    await asyncio.to_thread(router.proc.process.wait, 10)
    await asyncio.to_thread(wait_until, lambda: not _any_alive(router), 30, "orphans to exit")
    assert_all_gone(router)


def _any_alive(router: Router) -> bool:
    for pid in workers_of(router).values():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited; init reaps it late
            if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                return True
    return False
