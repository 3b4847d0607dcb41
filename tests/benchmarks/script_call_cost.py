"""Client CPU per script call of the request path's Redis link: a given git revision's
``state/multiplex.py`` against the one now, on one real ``redis-server``.

    python -m tests.benchmarks.script_call_cost [--before REV] [--calls N] [--rounds R]

Both links run in this process on uvloop, taking turns round by round (in reversed order
every other round); 16 coroutines make ``EVALSHA`` calls with the argument count of an
acquire (a ZADD and a ZCARD inside). Prints the median µs of process CPU per call of each
and their ratio. The older module is loaded from that revision's file; what it imports
from ``llm_router`` comes from the code now.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop
from tests.benchmarks.observer_cost import unpack_src
from tests.benchmarks.procs import ProcessStack
from tests.benchmarks.stores import STORES

from llm_router.state import multiplex as current

SCRIPT = "redis.call('ZADD', KEYS[1], 1, ARGV[1]); return redis.call('ZCARD', KEYS[1])"
KEYS = ["{llmr}:bench-script-calls"]
CONCURRENCY = 16
#: The rest of an acquire's arguments: settings, empty strings, small numbers.
TAIL: list[Any] = ["m1", 30_000, 1_000, 30_000, 3_600_000, "", "", "", 0, 0.5, "", 0, 1, "", 0, 0]


def _module_at(src: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "multiplex_before", src / "llm_router" / "state" / "multiplex.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["multiplex_before"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def _per_call_us(link: Any, sha: str, calls: int) -> float:
    todo = iter(range(calls))

    async def worker() -> None:
        for i in todo:
            await link.evalsha(sha, KEYS, [f"lease-{i}", *TAIL])

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.process_time() - start) * 1e6 / calls


async def _compare(
    modules: dict[str, types.ModuleType], port: int, calls: int, rounds: int
) -> dict[str, list[float]]:
    admin = aioredis.Redis(port=port)
    sha = await admin.script_load(SCRIPT)
    await admin.aclose()
    links = {
        name: m.MultiplexedRedis(m.fixed(m.Address("127.0.0.1", port)), m.Handshake(), 2.0)
        for name, m in modules.items()
    }
    for link in links.values():  # connect, warm up
        await _per_call_us(link, sha, 500)
    samples: dict[str, list[float]] = {name: [] for name in links}
    for r in range(rounds):
        for name in list(links) if r % 2 == 0 else list(links)[::-1]:
            samples[name].append(await _per_call_us(links[name], sha, calls))
    for link in links.values():
        await link.close()
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="main", help="git revision of multiplex.py to compare")
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="script-calls-") as tmp:
        work = Path(tmp)
        modules = {
            f"link at {args.before}": _module_at(unpack_src(args.before, work / "before")),
            "link now": current,
        }
        with ProcessStack(work / "logs") as stack:
            store = STORES["plain"](stack, work, None)
            samples = uvloop.run(_compare(modules, store.probe_port, args.calls, args.rounds))
    base = statistics.median(samples[f"link at {args.before}"])
    print(f"{'EVALSHA, 16 concurrent':<24} {'CPU µs/call':>12} {'vs before':>10}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<24} {median:>12.1f} {median / base:>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
