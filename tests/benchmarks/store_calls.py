"""The request path's shared connection on every store kind, in one process:
``python -m tests.benchmarks.store_calls [--rounds R] [--calls N]``.

One uvloop process opens the shared link (``Store.fast``, as a router opens it) to each of
plain ``redis://``, Sentinel, a 3-master Cluster and TLS (``stores.py``), then runs batches
of ``EVALSHA`` calls from 16 coroutines (the script of ``clients.py``), one batch per kind
in turn, the order reversed every other round. CPU per call is this process's, so the
kinds differ only in what the link does per call; batches seconds apart share the
machine's mood, and the median of the per-round ratios to plain is the figure to read.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import redis
from tests.benchmarks.clients import CONCURRENCY, KEYS, SCRIPT
from tests.benchmarks.procs import ProcessStack
from tests.benchmarks.stores import STORES

from llm_router.state.connect import open_store
from llm_router.state.multiplex import MultiplexedRedis

KINDS = ("plain", "sentinel", "cluster", "tls")


async def _batch(fast: MultiplexedRedis | None, sha: str, calls: int) -> float:
    """CPU µs per call of ``calls`` calls from ``CONCURRENCY`` coroutines."""
    assert fast is not None, "every store kind here has the shared link"

    async def worker(first: int) -> None:
        for i in range(first, calls, CONCURRENCY):
            await fast.evalsha(sha, KEYS, [i % 100])

    cpu = time.process_time()
    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
    return (time.process_time() - cpu) * 1e6 / calls


async def measure(urls: dict[str, str], shas: dict[str, str], rounds: int, calls: int) -> None:
    stores = {kind: open_store(url) for kind, url in urls.items()}
    try:
        for kind, store in stores.items():  # connections, caches
            await _batch(store.fast, shas[kind], 2000)
        samples: dict[str, list[float]] = {kind: [] for kind in stores}
        for round_no in range(rounds):
            order = list(stores) if round_no % 2 == 0 else list(stores)[::-1]
            for kind in order:
                samples[kind].append(await _batch(stores[kind].fast, shas[kind], calls))
    finally:
        for store in stores.values():
            await store.close()
    print(f"{CONCURRENCY} coroutines, {calls:,} EVALSHA calls per batch, {rounds} rounds")
    print("| store | CPU µs/call | vs plain: median [middle half] of the per-round ratios |")
    print("|---|---|---|")
    for kind, values in samples.items():
        ratios = sorted(v / p for v, p in zip(values, samples["plain"], strict=True))
        low, mid, high = statistics.quantiles(ratios, n=4)
        print(f"| {kind} | {statistics.median(values):.1f} | {mid:.3f}x [{low:.3f}-{high:.3f}] |")


def main(argv: list[str] | None = None) -> int:
    import uvloop

    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.store_calls")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=5000)
    opts = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="llmr-bench-store-calls-"))
    try:
        with ProcessStack(work / "logs") as stack:
            urls, shas = {}, {}
            for kind in KINDS:
                (work / kind).mkdir()
                handle = STORES[kind](stack, work / kind, None)
                urls[kind] = handle.url
                shas[kind] = str(redis.Redis(port=handle.probe_port).script_load(SCRIPT))
            uvloop.run(measure(urls, shas, opts.rounds, opts.calls))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
