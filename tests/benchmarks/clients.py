"""The request path's Redis client against the alternatives, and on every store kind.

``python -m tests.benchmarks.clients [--calls N] [--rounds R] [--clients ours,...]`` starts
its own Redis deployments and, for each (client, store) pair, a fresh process on uvloop in
which 16 coroutines make ``EVALSHA`` calls of a small script (a ZADD and a ZCARD, the shape
of the request path's calls) as fast as they can. It prints calls/s, the client process's CPU per
call (every thread: valkey-glide does its I/O in a Rust thread) and latency p50/p99, the
median of the rounds; the pairs take turns in each round, in reversed order every other
round.

- Clients on plain ``redis://``: ours (``state/multiplex.py``), redis-py's asyncio pool,
  coredis and valkey-glide. The last two are not dependencies of the project:
  ``pip install coredis valkey-glide`` into the environment first, or their rows say they
  are unavailable.
- Store kinds (Sentinel, a 3-master Cluster, TLS): ours and redis-py, each opened from the
  store URL the way a router opens it (``open_store``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.benchmarks.procs import ProcessStack
from tests.benchmarks.stores import STORES, StoreHandle

SCRIPT = "redis.call('ZADD', KEYS[1], 1, ARGV[1]); return redis.call('ZCARD', KEYS[1])"
KEYS = ["{llmr}:bench-clients"]
CONCURRENCY = 16
CLIENTS = ("ours", "redis-py", "coredis", "valkey-glide")
REPO = Path(__file__).resolve().parents[2]

Call = Callable[[int], Awaitable[Any]]


async def _ours(url: str, sha: str) -> Call:
    from llm_router.state.connect import open_store

    fast = open_store(url).fast
    assert fast is not None
    return lambda i: fast.evalsha(sha, KEYS, [i % 100])


async def _redis_py(url: str, sha: str) -> Call:
    from llm_router.state.connect import open_store

    client = open_store(url).redis  # what the request path used before: plain, Sentinel, Cluster
    return lambda i: client.evalsha(sha, 1, *KEYS, i % 100)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


async def _coredis(url: str, sha: str) -> Call:
    import coredis

    client: Any = coredis.Redis(port=_port(url))
    await client.__aenter__()
    return lambda i: client.evalsha(sha, keys=KEYS, args=[i % 100])


async def _glide(url: str, sha: str) -> Call:
    from glide import GlideClient, GlideClientConfiguration, NodeAddress

    config = GlideClientConfiguration([NodeAddress("127.0.0.1", _port(url))], request_timeout=2000)
    client = await GlideClient.create(config)
    return lambda i: client.custom_command(["EVALSHA", sha, "1", *KEYS, str(i % 100)])


FACTORIES: dict[str, Callable[[str, str], Awaitable[Call]]] = {
    "ours": _ours,
    "redis-py": _redis_py,
    "coredis": _coredis,
    "valkey-glide": _glide,
}
#: (client, store kind) pairs: every client on plain Redis, ours and redis-py on the rest.
PAIRS = [(name, "plain") for name in CLIENTS] + [
    (name, store) for store in ("sentinel", "cluster", "tls") for name in ("ours", "redis-py")
]


async def measure(name: str, url: str, probe_port: int, calls: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    admin = aioredis.Redis(port=probe_port)  # the server that holds the fleet's slot
    sha = await admin.script_load(SCRIPT)
    await admin.aclose()
    call = await FACTORIES[name](url, sha)
    for i in range(500):  # connections, caches
        await call(i)
    todo = iter(range(calls))
    latencies: list[float] = []

    async def worker() -> None:
        for i in todo:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    latencies.sort()
    return {
        "calls_per_s": calls / wall,
        "cpu_us_per_call": cpu * 1e6 / calls,
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
    }


def _child(name: str, url: str, probe_port: int, calls: int) -> None:
    import uvloop

    result = uvloop.run(measure(name, url, probe_port, calls))
    print(json.dumps(result), flush=True)
    os._exit(0)  # some clients keep threads that would hold the exit


def _run_one(name: str, store: StoreHandle, calls: int) -> dict[str, Any] | str:
    argv = [sys.executable, "-m", "tests.benchmarks.clients", "--child", name, store.url]
    done = subprocess.run(
        [*argv, str(store.probe_port), str(calls)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"unavailable: {last[:120]}"
    parsed: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return parsed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:
        _child(args[1], args[2], int(args[3]), int(args[4]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.clients")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated subset")
    opts = parser.parse_args(args)
    wanted = set(opts.clients.split(","))
    pairs = [pair for pair in PAIRS if pair[0] in wanted]

    work = Path(tempfile.mkdtemp(prefix="llmr-bench-clients-"))
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {pair: [] for pair in pairs}
    failed: dict[tuple[str, str], str] = {}
    try:
        with ProcessStack(work / "logs") as stack:
            stores = {}
            for kind in ("plain", "sentinel", "cluster", "tls"):
                (work / kind).mkdir()
                stores[kind] = STORES[kind](stack, work / kind, None)
            for round_no in range(opts.rounds):
                for pair in pairs if round_no % 2 == 0 else pairs[::-1]:
                    if pair in failed:
                        continue
                    result = _run_one(pair[0], stores[pair[1]], opts.calls)
                    if isinstance(result, str):
                        failed[pair] = result
                    else:
                        samples[pair].append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{CONCURRENCY} coroutines, {opts.calls:,} EVALSHA calls per pair per round, "
          f"median of {opts.rounds} rounds")  # fmt: skip
    print(
        f"{'client':<14}{'store':<10}{'calls/s':>10}{'CPU µs/call':>13}{'p50 µs':>9}{'p99 µs':>9}"
    )
    for pair in pairs:
        name, kind = pair
        if pair in failed:
            print(f"{name:<14}{kind:<10}{failed[pair]}")
            continue
        med = {k: statistics.median(s[k] for s in samples[pair]) for k in samples[pair][0]}
        print(
            f"{name:<14}{kind:<10}{med['calls_per_s']:>10,.0f}{med['cpu_us_per_call']:>13.1f}"
            f"{med['p50_us']:>9,.0f}{med['p99_us']:>9,.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
