"""Queue hand-off latency through real router replicas:
``python -m tests.benchmarks.handoff [--quick]``.

Two llm-router replicas on one redis-server and one node (``handoff_upstream``, a raw-ASGI
streaming upstream) registered with 1 or 2 slots. Clients keep the slots full and
``--waiters`` more requests queued, sending alternately to both replicas, so the queue's
waiters sit on both. A *hand-off* is a slot freed by a request's end and taken by a request
that had queued (``x-queue-status: queued``). Both ends are read on the machine's one
monotonic clock (``time.monotonic_ns``, which the node's process and this one share):

- **node gap**: the node wrote the freeing request's last byte → the queued request arrived
  at the node. That is the router's whole hand-off: reading the end of the stream,
  releasing the lease, the capacity event, the waiter's replica waking, its acquire script,
  and forwarding the request;
- **first-byte gap**: the same end → the queued request's first byte at its client (the
  node answers its first chunk at once, so this is the node gap plus one proxied chunk).

Slots are matched to the requests that take them in order (the earliest freed slot goes to
the next arrival), per run, on the node's log. Scenarios: one tenant; four tenants of equal
weight in one band; four tenants in two bands (5 and 7) with weights 1 and 2. A baseline row
sends requests one at a time with a free slot (send → arrival at the node / first byte), so
the hand-off's cost over the plain path reads as a difference.

Each run is bounded (``--requests`` per run, ``--runs`` per row); every process is stopped
on exit. A row's p50 and p99 are over every hand-off of its runs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from tests.benchmarks.loadgen import percentile
from tests.benchmarks.procs import ProcessStack, Unavailable, free_port, wait_http_ok, wait_port
from tests.benchmarks.stores import STORES
from tests.benchmarks.targets import REPO, UVICORN_FAST, Heartbeater, router_command

from llm_router.auth import ManagedKey, Scope
from llm_router.security.managed_keys import ManagedKeyStore
from llm_router.state.keys import Keys

#: name → tenants as (tenant, band, weight); requests go round-robin over them.
SCENARIOS: dict[str, list[tuple[str, int, int]]] = {
    "1 tenant": [("solo", 5, 1)],
    "4 tenants, 1 band": [(f"team-{i}", 5, 1) for i in range(4)],
    "4 tenants, bands 5 and 7, weights 1 and 2": [
        ("batch-1", 5, 1),
        ("batch-2", 5, 2),
        ("chat-1", 7, 1),
        ("chat-2", 7, 2),
    ],
}
SLOTS = (1, 2)


@dataclass
class Sent:
    sent_ns: int
    first_ns: int
    queued: bool
    status: int


@dataclass
class Row:
    scenario: str
    slots: int
    node_gap_ms: list[float] = field(default_factory=list)
    first_byte_gap_ms: list[float] = field(default_factory=list)
    failed: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "slots": self.slots,
            "hand_offs": len(self.node_gap_ms),
            "node_gap_p50_ms": percentile(self.node_gap_ms, 50),
            "node_gap_p99_ms": percentile(self.node_gap_ms, 99),
            "first_byte_gap_p50_ms": percentile(self.first_byte_gap_ms, 50),
            "first_byte_gap_p99_ms": percentile(self.first_byte_gap_ms, 99),
            "failed": self.failed,
        }


def hand_offs(log: list[list[Any]], sent: dict[str, Sent]) -> tuple[list[float], list[float]]:
    """(node gaps, first-byte gaps) in ms from the node's log of one run: each arrival takes
    the earliest slot freed and not yet taken; only requests that queued are counted."""
    events = sorted(
        [(int(ended), 0, rid) for rid, _, ended in log if ended]
        + [(int(arrived), 1, rid) for rid, arrived, _ in log]
    )
    freed: deque[int] = deque()
    node, first = [], []
    for at, kind, rid in events:
        if kind == 0:
            freed.append(at)
            continue
        if not freed:
            continue  # the run's first requests fill empty slots
        slot_freed = freed.popleft()
        request = sent.get(rid)
        if request is not None and request.queued:
            node.append((at - slot_freed) / 1e6)
            first.append((request.first_ns - slot_freed) / 1e6)
    return node, first


async def _send(http: httpx.AsyncClient, router: str, key: str, model: str, rid: str) -> Sent:
    body = {
        "model": model,
        "user": rid,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    sent = time.monotonic_ns()
    first = 0
    async with http.stream(
        "POST", f"{router}/v1/chat/completions", json=body,
        headers={"authorization": f"Bearer {key}"},
    ) as response:  # fmt: skip
        async for _ in response.aiter_raw():
            first = first or time.monotonic_ns()
        queued = response.headers.get("x-queue-status") == "queued"
        return Sent(sent, first, queued, response.status_code)


async def run_once(
    http: httpx.AsyncClient,
    routers: list[str],
    upstream: str,
    keys: list[str],
    model: str,
    concurrency: int,
    total: int,
) -> tuple[list[float], list[float], int]:
    await http.delete(f"{upstream}/log")
    numbers = itertools.count()
    sent: dict[str, Sent] = {}

    async def worker() -> None:
        while (i := next(numbers)) < total:
            rid = f"r{i}"
            sent[rid] = await _send(
                http, routers[i % len(routers)], keys[i % len(keys)], model, rid
            )

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    log = (await http.get(f"{upstream}/log")).json()
    node, first = hand_offs(log, sent)
    return node, first, sum(1 for s in sent.values() if s.status != 200)


async def free_slot_baseline(
    http: httpx.AsyncClient, routers: list[str], upstream: str, key: str, model: str, n: int
) -> dict[str, Any]:
    """One request at a time, a slot always free: send → arrival at the node, → first byte."""
    await http.delete(f"{upstream}/log")
    sent = {}
    for i in range(n):
        sent[f"b{i}"] = await _send(http, routers[i % len(routers)], key, model, f"b{i}")
    arrived = {rid: int(at) for rid, at, _ in (await http.get(f"{upstream}/log")).json()}
    to_node = [(arrived[r] - s.sent_ns) / 1e6 for r, s in sent.items() if r in arrived]
    to_first = [(s.first_ns - s.sent_ns) / 1e6 for s in sent.values()]
    return {
        "requests": n,
        "to_node_p50_ms": percentile(to_node, 50),
        "to_node_p99_ms": percentile(to_node, 99),
        "first_byte_p50_ms": percentile(to_first, 50),
        "first_byte_p99_ms": percentile(to_first, 99),
    }


async def make_keys(redis_url: str) -> dict[str, str]:
    """One managed key per tenant of every scenario (created before the routers start)."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        store = ManagedKeyStore(redis, Keys())
        made = {}
        for tenant, band, weight in {t for ts in SCENARIOS.values() for t in ts}:
            queueing = ManagedKey(Scope.API, "", 0, tenant=tenant, priority=band, weight=weight)
            made[tenant], _ = await store.create(Scope.API, name=tenant, queueing=queueing)
        return made
    finally:
        await redis.aclose()


@contextmanager
def fleet(work: Path, hold_ms: float) -> Iterator[tuple[list[str], str, dict[str, str]]]:
    """Redis, the logging node, two router replicas, the node registered once per slot
    count (one model each). Yields router URLs, the node's URL and the tenants' keys."""
    with ExitStack() as stack:
        procs = stack.enter_context(ProcessStack(work / "logs"))
        store = STORES["plain"](procs, work, None)
        keys = asyncio.run(make_keys(store.url))
        port = free_port()
        upstream = procs.start(
            "handoff-node",
            [sys.executable, "-m", "uvicorn", "tests.benchmarks.handoff_upstream:app",
             "--host", "127.0.0.1", "--port", str(port), *UVICORN_FAST],
            env={"HANDOFF_HOLD_MS": str(hold_ms)}, cwd=REPO,
        )  # fmt: skip
        wait_port(upstream, port, 20)
        routers = []
        for i in range(2):
            router_port = free_port()
            proc = procs.start(
                f"router-{i}",
                [*router_command(), "--redis-url", store.url, "--host", "127.0.0.1",
                 "--port", str(router_port), "--auth-disabled", "--queue-max", "1000",
                 "--queue-timeout-s", "120"],
                cwd=REPO, env={"LLM_ROUTER_LOG_LEVEL": "warning"},
            )  # fmt: skip
            wait_http_ok(proc, f"http://127.0.0.1:{router_port}/healthz", 30)
            routers.append(f"http://127.0.0.1:{router_port}")
        for slots in SLOTS:
            beat = Heartbeater(
                routers[0], port, slots, model=f"handoff-{slots}", machine_name=f"handoff-{slots}"
            )
            beat.start()
            stack.callback(beat.stop)
            for router in routers:  # both replicas route it (and loaded their scripts)
                wait_http_ok(
                    proc, f"{router}/v1/chat/completions", 20,
                    json_body={"model": f"handoff-{slots}", "messages": []},
                    headers={"authorization": f"Bearer {keys['solo']}"},
                )  # fmt: skip
        yield routers, f"http://127.0.0.1:{port}", keys


def _ms(value: float) -> str:
    return f"{value:.2f}"


HEADER = [
    "scenario",
    "slots",
    "hand-offs",
    "node gap p50 / p99 (ms)",
    "first-byte gap p50 / p99 (ms)",
    "failed",
]


def _pair(p50: float, p99: float) -> str:
    return f"{p50:.2f} / {p99:.2f}"


def table(baseline: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    cells = [
        [
            r["scenario"],
            str(r["slots"]),
            str(r["hand_offs"]),
            _pair(r["node_gap_p50_ms"], r["node_gap_p99_ms"]),
            _pair(r["first_byte_gap_p50_ms"], r["first_byte_gap_p99_ms"]),
            str(r["failed"]),
        ]
        for r in rows
    ]
    cells.append(
        [
            "free slot, nothing queued (send -> node, send -> first byte)",
            "-",
            str(baseline["requests"]),
            _pair(baseline["to_node_p50_ms"], baseline["to_node_p99_ms"]),
            _pair(baseline["first_byte_p50_ms"], baseline["first_byte_p99_ms"]),
            "-",
        ]
    )
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join([*lines, *("| " + " | ".join(c) + " |" for c in cells)])


async def measure(
    routers: list[str], upstream: str, keys: dict[str, str], args: argparse.Namespace
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=150, limits=limits) as http:
        baseline = await free_slot_baseline(
            http, routers, upstream, keys["solo"], "handoff-2", args.requests // 2
        )
        rows = []
        for slots in SLOTS:
            for name, tenants in SCENARIOS.items():
                row = Row(name, slots)
                for _ in range(args.runs):
                    node, first, failed = await run_once(
                        http, routers, upstream, [keys[t] for t, _, _ in tenants],
                        f"handoff-{slots}", slots + args.waiters, args.requests,
                    )  # fmt: skip
                    row.node_gap_ms += node
                    row.first_byte_gap_ms += first
                    row.failed += failed
                rows.append(row.summary())
                print(f"  {rows[-1]}", flush=True)
        return baseline, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, one run per row")
    parser.add_argument("--requests", type=int, default=300, help="requests per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per row")
    parser.add_argument("--waiters", type=int, default=8, help="requests queued at any time")
    parser.add_argument("--hold-ms", type=float, default=20.0, help="how long a request runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.runs = min(args.requests, 80), 1
    try:
        with (
            tempfile.TemporaryDirectory(prefix="llmr-handoff-") as tmp,
            fleet(Path(tmp), args.hold_ms) as (routers, upstream, keys),
        ):
            baseline, rows = asyncio.run(measure(routers, upstream, keys, args))
    except Unavailable as exc:
        print(f"hand-off benchmark unavailable: {exc}", file=sys.stderr)
        return 1
    print(
        f"\nQueue hand-off, 2 replicas, {args.waiters} waiters, requests of {args.hold_ms:g} ms, "
        f"{args.requests} requests x {args.runs} runs per row\n"
    )
    print(table(baseline, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
