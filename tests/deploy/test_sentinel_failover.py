"""Redis Sentinel for real: routers on ``redis+sentinel://``, the primary SIGKILLed while
traffic flows.

A primary, a replica and one sentinel (down after 1 s, failover timeout 3 s) run on
loopback. Two replicas route a steady stream of requests; the primary dies mid-stream.
Requests during the switch must fail fast and clearly (503 in the OpenAI error shape), none
may hang, and routing must resume on the promoted replica with the same router processes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from deploy.topologies import SentinelTopology
from integration.conftest import open_cluster
from integration.probes import chat_body
from integration.procs import Cluster, Router, wait_until
from llm_router.state.keys import Keys

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SHARED = "s-gguf"
METAL_ONLY = "s-mlx"
WORKERS = 6
#: A request must end well within this even while Redis is gone (socket timeout 2 s).
HANG_BOUND_S = 8.0
#: After routing resumes, keep going this long to see it stays up.
AFTER_RECOVERY_S = 2.0
TEST_BOUND_S = 40.0
#: 503 codes allowed while the store switches: the store itself, or nodes whose liveness
#: lapsed while their heartbeats could not be written.
SWITCH_CODES = {"state_store_unavailable", "no_capable_nodes"}


def sdk(router: Router) -> openai.AsyncOpenAI:
    """The official client on one replica, its own retries off: every failure counts."""
    return openai.AsyncOpenAI(base_url=router.api_base, api_key="x", max_retries=0, timeout=30)


@dataclass
class Outcome:
    started: float
    ended: float
    status: int
    code: str | None

    @property
    def duration(self) -> float:
        return self.ended - self.started


@pytest.fixture
def fleet(redis_sentinel: SentinelTopology) -> Iterator[Cluster]:
    with open_cluster(redis_sentinel.url) as cluster:
        cluster.up(routers=2)
        metal = cluster.start_node([SHARED, METAL_ONLY], backend="metal", machine_name="mac")
        cuda = cluster.start_node(
            [SHARED], backend="cuda", machine_name="cuda", router=cluster.routers[1]
        )
        cluster.wait_online(metal)
        cluster.wait_online(cuda)
        yield cluster


async def _one(http: httpx.AsyncClient, url: str, model: str) -> Outcome:
    started = time.monotonic()
    try:
        response = await http.post(
            f"{url}/v1/chat/completions", json=chat_body(model, max_tokens=2)
        )
    except httpx.TimeoutException:
        return Outcome(started, time.monotonic(), 0, "client_timeout")
    code = None
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}, error
        code = error["code"]
    return Outcome(started, time.monotonic(), response.status_code, code)


async def test_primary_killed_during_traffic(
    fleet: Cluster, redis_sentinel: SentinelTopology
) -> None:
    # Traffic flows through the SDK first.
    for router in fleet.routers:
        reply = await sdk(router).chat.completions.create(
            model=METAL_ONLY, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.model == METAL_ONLY
    pids = [r.proc.process.pid for r in fleet.routers]
    old_primary = redis_sentinel.primary.port

    outcomes: list[Outcome] = []
    killed_at: float | None = None
    stop = asyncio.Event()
    urls = itertools.cycle([r.url for r in fleet.routers])
    models = itertools.cycle([SHARED, METAL_ONLY])

    async def worker(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            outcomes.append(await _one(http, next(urls), next(models)))
            await asyncio.sleep(0.02)

    promoted_port = old_primary

    async def promoted() -> float:
        nonlocal promoted_port
        while True:
            promoted_port = await asyncio.to_thread(redis_sentinel.current_primary_port)
            if promoted_port != old_primary:
                return time.monotonic()
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=HANG_BOUND_S + 5) as http:
        workers = [asyncio.create_task(worker(http)) for _ in range(WORKERS)]
        try:
            await asyncio.sleep(1.0)
            assert outcomes and all(o.status == 200 for o in outcomes), Counter(
                (o.status, o.code) for o in outcomes
            )
            killed_at = time.monotonic()
            redis_sentinel.primary.kill()
            promoted_at = await asyncio.wait_for(promoted(), timeout=TEST_BOUND_S)

            def recovered_since() -> float | None:
                failed = [o.ended for o in outcomes if o.started > killed_at and o.status != 200]
                after = [o for o in outcomes if o.started > max(failed, default=killed_at)]
                return after[0].ended if len(after) >= 2 * WORKERS else None

            deadline = killed_at + TEST_BOUND_S
            # Polls a condition over the outcomes list; no single event marks it.
            while recovered_since() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            recovered_at = recovered_since()
            await asyncio.sleep(AFTER_RECOVERY_S)
        finally:
            stop.set()
            await asyncio.gather(*workers)

    during = [o for o in outcomes if o.started >= killed_at or o.ended >= killed_at]
    failures = [o for o in during if o.status != 200]
    tally = Counter((o.status, o.code) for o in during)
    longest = max(o.duration for o in during)
    first_failure = min((o.ended for o in failures), default=killed_at)
    print(
        f"sentinel failover: promoted {promoted_at - killed_at:.2f}s after SIGKILL; "
        f"first failure {first_failure - killed_at:.2f}s; "
        f"routing resumed {(recovered_at or float('nan')) - killed_at:.2f}s; "
        f"longest request {longest:.2f}s; outcomes {dict(tally)}"
    )
    assert recovered_at is not None, f"routing did not resume: {dict(tally)}"
    # Every failure during the switch is a clear 503 with a known code; nothing hung.
    assert all(o.status == 503 and o.code in SWITCH_CODES for o in failures), dict(tally)
    assert longest < HANG_BOUND_S, longest
    # The same router processes carry on: no restart was needed.
    assert [r.proc.process.pid for r in fleet.routers] == pids
    assert all(r.proc.alive for r in fleet.routers)
    # And the last stretch is clean.
    tail = [o for o in outcomes if o.started > recovered_at]
    assert tail and all(o.status == 200 for o in tail), Counter((o.status, o.code) for o in tail)

    # The fleet reads back from the new primary: both nodes online, the model list intact.
    statuses = {r["machine_name"]: r["status"] for r in fleet.nodes_view()}
    assert statuses == {"mac": "online", "cuda": "online"}
    raw = await sdk(fleet.routers[1]).chat.completions.with_raw_response.create(
        model=METAL_ONLY, messages=[{"role": "user", "content": "again"}]
    )
    assert raw.headers["x-llm-router-node"] == fleet.node_ids()["mac"]
    assert isinstance(raw.parse(), openai.types.chat.ChatCompletion)

    # Queue wake-ups follow the failover too: both replicas re-subscribed on the new primary.
    channel = Keys(fleet.key_prefix).events
    new_primary = next(s for s in redis_sentinel.servers if s.port == promoted_port)

    def subscribers() -> int:
        ((_, count),) = new_primary.client().pubsub_numsub(channel)
        return int(count)

    wait_until(lambda: subscribers() == len(fleet.routers), 10.0, "re-subscription")
