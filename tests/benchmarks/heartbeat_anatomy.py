"""Where the unchanged heartbeat's server time goes.

The fleet's function library is loaded several times, each copy with the heartbeat script
cut short at one point or with one command taken out; every copy replays the very calls the
registry made for each node (captured once), so the differences between rows are what each
part costs. Calibration rows in the same rounds: ``FCALL`` of an empty function with the
same arguments, and of a function running just the unchanged beat's commands on scratch keys.

    python -m tests.benchmarks.heartbeat_anatomy --nodes 1000 --models 50

Server µs per call from ``INFO commandstats``, medians of ``--rounds`` rounds, rows
alternating within each round so that a busy spell touches every row alike.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from tests.benchmarks.fleet_adapter import Fleet
from tests.benchmarks.micro import _axis_models, _populate, commandstats

from llm_router.state import scripts as fleet_scripts

SWEEP = "if now % UNCHANGED_SWEEP_PACE == 0 then sweep_lapsed(now, SWEEP_BATCH) end"
LEASES = "local first = redis.call('ZRANGE', k_leases(id), 0, 0, 'WITHSCORES')[2]"
METRICS = "  redis.call('SET', k_node_metrics(id), metrics)\n  redis.call('ZADD'"
FIRST_READ = "local c = hmget_named("
AFTER_READ = "if not c.token_hash then return {'not_found'} end"

#: Each variant: how the heartbeat script's text is changed (the light call is ARGV[9]).
VARIANTS: dict[str, Callable[[str], str]] = {
    "as shipped": lambda text: text,
    "arguments only (returns at once)": lambda text: text.replace(
        FIRST_READ, "if ARGV[9] == '1' then return {'ok'} end\n" + FIRST_READ, 1
    ),
    "up to the first read (HMGET)": lambda text: text.replace(
        AFTER_READ, "if ARGV[9] == '1' then return {'ok'} end\n" + AFTER_READ, 1
    ),
    "without the sweep (1 beat in 4)": lambda text: text.replace(SWEEP, "", 1),
    "without the earliest-lease look": lambda text: text.replace(LEASES, "local first = nil", 1),
    "without the metrics SET": lambda text: text.replace(METRICS, "  redis.call('ZADD'", 1),
}

#: The unchanged beat's commands alone, on scratch keys (KEYS[1] the node hash, read only).
BARE_COMMANDS = """
local t = redis.call('TIME')
redis.call('HMGET', KEYS[1], 'token_hash', 'state_digest', 'last_seen', 'alive_until',
  'excl_next', 'known_at')
redis.call('HSET', 'anatomy:h:' .. ARGV[1], 'last_seen', t[1], 'alive_until', t[1],
  'state_digest', ARGV[7])
redis.call('SET', 'anatomy:m:' .. ARGV[1], ARGV[8])
redis.call('ZADD', 'anatomy:alive', t[1], ARGV[1])
redis.call('ZRANGE', 'anatomy:l:' .. ARGV[1], 0, 0, 'WITHSCORES')
return 1
"""


def library_with(edit: Callable[[str], str]) -> fleet_scripts.FunctionLibrary:
    """The fleet's function library with the heartbeat script edited (its own digest)."""
    original = fleet_scripts._read

    def read(part: str) -> str:
        text = original(part)
        if part != "heartbeat":
            return text
        edited = edit(text)
        if edit is not VARIANTS["as shipped"] and edited == text:
            raise RuntimeError("a variant's anchor is gone from heartbeat.lua")
        return edited

    fleet_scripts._read = read
    try:
        return fleet_scripts.function_library()
    finally:
        fleet_scripts._read = original


async def per_call(redis: Redis, call: Callable[[int], Awaitable[Any]], calls: int) -> float:
    await redis.config_resetstat()
    for i in range(calls):
        await call(i)
    stats = await commandstats(redis)
    count, usec = stats.get("fcall", (0, 0.0))
    return usec / count if count else float("nan")


async def anatomy(redis: Redis, nodes: int, models: int, calls: int, rounds: int) -> None:
    await redis.flushall()
    fleet = Fleet(redis)
    regs = await _populate(fleet, nodes, lambda i: _axis_models(i, models), 8)
    for j, reg in enumerate(regs):  # the first beat after registering is a full one
        await fleet.heartbeat(reg, _axis_models(j, models))
    captured: list[tuple[Any, ...]] = []
    real = redis.fcall

    async def spy(name: str, numkeys: int, *rest: Any) -> Any:
        captured.append(rest)
        return await real(name, numkeys, *rest)

    redis.fcall = spy  # type: ignore[method-assign]
    for j, reg in enumerate(regs):
        await fleet.heartbeat(reg, _axis_models(j, models))
    redis.fcall = real  # type: ignore[method-assign]
    light = sum(1 for rest in captured if rest[9] == "1")
    if light != len(regs):
        raise RuntimeError(f"{light} of {len(regs)} beats went out as the light call")

    names = {}
    for label, edit in VARIANTS.items():
        library = library_with(edit)
        await redis.function_load(library.source, replace=True)
        names[label] = library.names["heartbeat"]
    calibration = (
        "#!lua name=anatomy\n"
        "redis.register_function('anatomy_empty', function(KEYS, ARGV) return 1 end)\n"
        f"redis.register_function('anatomy_bare', function(KEYS, ARGV) {BARE_COMMANDS} end)"
    )
    await redis.function_load(calibration, replace=True)

    def node_hash(i: int) -> str:
        return fleet.keys.node(regs[i % len(regs)].node_id)

    def replay(function: str) -> Callable[[int], Awaitable[Any]]:
        return lambda i: redis.fcall(function, 1, *captured[i % len(captured)])

    def calibrate(function: str) -> Callable[[int], Awaitable[Any]]:
        return lambda i: redis.fcall(function, 1, node_hash(i), *captured[i % len(captured)][1:])

    rows: dict[str, list[float]] = {label: [] for label in names}
    rows["FCALL of an empty function, same arguments"] = []
    rows["FCALL of the beat's commands alone"] = []
    for _ in range(rounds):
        for label, function in names.items():
            rows[label].append(await per_call(redis, replay(function), calls))
        rows["FCALL of an empty function, same arguments"].append(
            await per_call(redis, calibrate("anatomy_empty"), calls)
        )
        rows["FCALL of the beat's commands alone"].append(
            await per_call(redis, calibrate("anatomy_bare"), calls)
        )
    shipped = statistics.median(rows["as shipped"])
    print(f"unchanged heartbeat, {nodes} nodes x {models} models, {calls} calls x {rounds} rounds")
    for label, values in rows.items():
        median = statistics.median(values)
        print(f"  {label:<44} {median:6.1f} µs  ({median / shipped:4.2f}x the shipped beat)")


def _main() -> None:
    import argparse

    from tests.redis_server import running_redis_server

    p = argparse.ArgumentParser(description="where the unchanged heartbeat's time goes")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--models", type=int, default=50)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    async def go(port: int) -> None:
        redis = Redis(host="127.0.0.1", port=port)
        try:
            await anatomy(redis, args.nodes, args.models, args.calls, args.rounds)
        finally:
            await redis.aclose()

    with running_redis_server() as server:
        asyncio.run(go(server.port))


if __name__ == "__main__":
    _main()
