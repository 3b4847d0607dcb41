"""Acquire and release of a given git revision's scripts against the ones now, side by side
on one real ``redis-server`` holding one fleet.

    python -m tests.benchmarks.walk_cost [--before REV] [--nodes N] [--models 1,50]
                                         [--calls C] [--rounds R]

Both function libraries are loaded into the same Redis (their names carry a digest of their
sources, so they coexist) and run on the same data: each round makes C acquires of one model
and then releases them, once with each library, in reversed order every other round. Server
µs per call is ``INFO commandstats``' FCALL time over its calls after a ``CONFIG RESETSTAT``;
commands per call are the other commands counted in the same window. Prints the median of
the rounds for each library and their ratio: on a busy machine only such paired figures
mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from tests.benchmarks.fleet_adapter import Fleet
from tests.benchmarks.micro import MODEL, _axis_models, _populate, commandstats

from llm_router.state import scripts as current
from llm_router.state.scripts import FunctionLibrary, function_library


def library_at(rev: str) -> FunctionLibrary:
    """The function library built from ``rev``'s Lua files (with today's builder)."""

    def read_at(part: str) -> str:
        path = f"src/llm_router/state/lua/{part}.lua"
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
        return shown.stdout if shown.returncode == 0 else ""  # a helper file it did not have

    saved = current._read
    current._read = read_at  # type: ignore[assignment]
    try:
        return function_library()
    finally:
        current._read = saved  # type: ignore[assignment]


def _window(stats: dict[str, tuple[int, float]]) -> tuple[float, float]:
    """(µs per FCALL, other commands per FCALL) since the last reset."""
    calls, usec = stats.get("fcall", (0, 0.0))
    inner = sum(n for name, (n, _) in stats.items() if name not in ("fcall", "config|resetstat"))
    return (usec / calls, inner / calls) if calls else (float("nan"), float("nan"))


async def _round(redis: Redis, fleet: Fleet, calls: int) -> dict[str, tuple[float, float]]:
    held: list[tuple[str, str]] = []
    await redis.config_resetstat()
    for _ in range(calls):
        got = await fleet.acquire(MODEL)
        if got is None:
            raise RuntimeError("acquire found no node; the benchmark fleet is broken")
        held.append(got)
    acquire = _window(await commandstats(redis))
    await redis.config_resetstat()
    for node, lease in held:
        await fleet.release(node, lease)
    release = _window(await commandstats(redis))
    return {"acquire": acquire, "release": release}


async def compare(
    redis: Redis, before: FunctionLibrary, nodes: int, per_node: int, calls: int, rounds: int
) -> dict[str, Any]:
    await redis.flushall()
    now, old = Fleet(redis), Fleet(redis)
    old.scripts._library = before
    regs = await _populate(now, nodes, lambda i: _axis_models(i, per_node), 8)
    for start in range(0, nodes, 64):
        await asyncio.gather(
            *(
                now.heartbeat(regs[j], _axis_models(j, per_node))
                for j in range(start, min(start + 64, nodes))
            )
        )
    fleets = {"before": old, "now": now}
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {
        side: {"acquire": [], "release": []} for side in fleets
    }
    await _round(redis, old, calls)  # loads the older library; warms both
    for r in range(rounds):
        order = ("before", "now") if r % 2 == 0 else ("now", "before")
        for side in order:
            for step, value in (await _round(redis, fleets[side], calls)).items():
                samples[side][step].append(value)
    row: dict[str, Any] = {"nodes": nodes, "models_per_node": per_node}
    for side, steps in samples.items():
        for step, values in steps.items():
            row[f"{step}_{side}_us"] = statistics.median(v[0] for v in values)
            row[f"{step}_{side}_commands"] = statistics.median(v[1] for v in values)
    for step in ("acquire", "release"):
        row[f"{step}_ratio"] = row[f"{step}_now_us"] / row[f"{step}_before_us"]
    print(
        f"  {nodes:>6} nodes x {per_node:>3} models: "
        + ", ".join(
            f"{step} {row[f'{step}_before_us']:6.1f} -> {row[f'{step}_now_us']:6.1f} µs "
            f"(x{row[f'{step}_ratio']:.2f}; commands {row[f'{step}_before_commands']:.1f} -> "
            f"{row[f'{step}_now_commands']:.1f})"
            for step in ("acquire", "release")
        ),
        flush=True,
    )
    return row


def main(argv: Sequence[str] | None = None) -> int:
    from tests.redis_server import running_redis_server

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="main", help="git revision of the Lua scripts to compare")
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--models", default="1,50")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    before = library_at(args.before)
    if before.names == function_library().names:
        print(f"note: {args.before} has the same scripts as the tree now")

    async def go(port: int) -> None:
        redis = Redis(host="127.0.0.1", port=port)
        try:
            for width in (int(m) for m in args.models.split(",")):
                await compare(redis, before, args.nodes, width, args.calls, args.rounds)
        finally:
            await redis.aclose()

    with running_redis_server() as server:
        asyncio.run(go(server.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
