"""End to end behind a real load balancer: three router replicas behind HAProxy, nodes
registering and heartbeating through the balancer, the ``openai`` SDK as the client.

Requests spread over the replicas (HAProxy's own per-server counters say so). One replica
is SIGKILLed while it has requests in flight: no request sent after the kill fails, since
the balancer retries refused connections on another replica and health checks take the
dead one out. The leases the dead replica held are never released by anyone; they expire
after the lease TTL and the capacity comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from deploy.haproxy import HAProxy, start_haproxy
from integration.conftest import open_cluster
from integration.procs import Cluster, Router, wait_until
from llm_router import fleetctl

pytestmark = [pytest.mark.redis, pytest.mark.slow]

MODEL = "lb-gguf"
TOKENS_PER_S = 40
HOLD_TOKENS = 16  # about 0.4 s per request
WORKERS = 6
#: Long enough that the dead replica's leases outlive the traffic after the kill (they
#: were last renewed at most a third of this before it).
LEASE_TTL_S = 4.0
AFTER_KILL_S = 1.2


@dataclass
class Setup:
    cluster: Cluster
    proxy: HAProxy

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.proxy.url}/v1", api_key="x", max_retries=0, timeout=30
        )

    def fleet_json(self, action: str) -> Any:
        """``llm-router fleet --json ACTION`` on this fleet (blocking: run it in a thread)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = fleetctl.main(
                ["--redis-url", self.cluster.redis_url, "--key-prefix",
                 self.cluster.key_prefix, "--json", action]
            )  # fmt: skip
        assert status == 0
        return json.loads(out.getvalue())


@pytest.fixture
def setup(redis_url: str) -> Iterator[Setup]:
    with open_cluster(redis_url) as cluster:
        routers = cluster.up(routers=3, lease_ttl_s=LEASE_TTL_S)
        proxy = start_haproxy([r.port for r in routers], cluster.workdir)
        try:
            # The nodes know only the balancer's address.
            via_lb = Router(proc=routers[0].proc, port=proxy.port)
            for backend in ("metal", "cuda"):
                node = cluster.start_node(
                    [MODEL], backend=backend, router=via_lb, max_concurrency=4,
                    ttft_ms=5, tokens_per_s=TOKENS_PER_S,
                )  # fmt: skip
                cluster.wait_online(node)
            yield Setup(cluster, proxy)
        finally:
            proxy.stop()


@dataclass
class Outcome:
    started: float
    ended: float
    error: str | None


async def test_replica_killed_under_load_behind_haproxy(setup: Setup) -> None:
    client = setup.client()
    outcomes: list[Outcome] = []
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            started = time.monotonic()
            error = None
            try:
                await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=HOLD_TOKENS,
                )
            except openai.APIError as exc:
                error = f"{type(exc).__name__}: {exc}"
            outcomes.append(Outcome(started, time.monotonic(), error))

    before = {name: int(row["hrsp_2xx"]) for name, row in setup.proxy.stats().items()}
    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    try:
        await asyncio.sleep(2.0)
        spread = {
            name: int(row["hrsp_2xx"]) - before[name] for name, row in setup.proxy.stats().items()
        }
        # Wait for a moment when the victim holds requests, so that it dies with leases.
        victim = setup.cluster.routers[0]
        await asyncio.to_thread(
            wait_until,
            lambda: int(setup.proxy.stats()["r1"]["scur"]) >= 2,
            10.0,
            "requests in flight on the victim",
            0.01,
        )
        killed_at = time.monotonic()
        victim.proc.kill()
        await asyncio.to_thread(
            wait_until,
            lambda: setup.proxy.stats()["r1"]["status"].startswith("DOWN"),
            10.0,
            "haproxy to mark the victim down",
        )
        marked_down_at = time.monotonic()
        await asyncio.sleep(max(0.0, killed_at + AFTER_KILL_S - time.monotonic()))
    finally:
        stop.set()
        await asyncio.gather(*workers)
    traffic_ended = time.monotonic()

    # Spread: every replica served a fair share before the kill.
    total = sum(spread.values())
    assert all(count >= total * 0.15 for count in spread.values()), spread

    failed = [o for o in outcomes if o.error]
    after_kill = [o for o in outcomes if o.started >= killed_at]
    late_failures = [o for o in failed if o.started >= killed_at]
    print(
        f"haproxy e2e: {len(outcomes)} requests, {len(failed)} failed "
        f"({Counter(o.error.split(':')[0] for o in failed if o.error)}), "
        f"{len(after_kill)} sent after the kill; victim marked DOWN "
        f"{marked_down_at - killed_at:.2f}s after SIGKILL; per-replica 2xx before: {spread}"
    )
    assert after_kill, "no traffic after the kill"
    assert not late_failures, [o.error for o in late_failures]
    assert len(failed) <= WORKERS

    # The dead replica's leases: held with nobody to renew or release them, they expire.
    rows = await asyncio.to_thread(setup.fleet_json, "leases")
    orphaned = sum(row["in_flight"] for row in rows)
    assert orphaned >= 1, rows

    def capacity_back() -> bool:
        return sum(int(row["in_flight"]) for row in setup.fleet_json("leases")) == 0

    await asyncio.to_thread(wait_until, capacity_back, LEASE_TTL_S + 10, "leases to expire")
    back_at = time.monotonic()
    print(
        f"haproxy e2e: {orphaned} leases orphaned right after the traffic; capacity back "
        f"{back_at - killed_at:.2f}s after the kill ({back_at - traffic_ended:.2f}s after "
        f"the last request; lease TTL {LEASE_TTL_S:g}s)"
    )
    # Full capacity again: 8 requests at once (2 nodes x 4 slots) are served without queueing.
    raws = await asyncio.gather(
        *(
            client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=4
            )
            for _ in range(8)
        )
    )
    assert all(r.headers.get("x-queue-status") != "queued" for r in raws)
    survivor = setup.cluster.routers[1]
    node_ids = {str(r["id"]) for r in setup.cluster.nodes_view(survivor)}
    assert {r.headers["x-llm-router-node"] for r in raws} == node_ids
