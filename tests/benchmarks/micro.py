"""Redis micro-benchmarks of the fleet's scripts, on a real redis-server.

Server time per call comes from ``INFO commandstats`` (usec/calls of FCALL or EVALSHA after
a ``CONFIG RESETSTAT``), client time from the caller's clock around each await. A naive
scan (every capable node's leases counted on each pick) runs on the same data, to show
what the load index saves.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis
from tests.benchmarks.fleet_adapter import Affinity, Fleet, Granted, Queued, Tenancy
from tests.benchmarks.loadgen import percentile

MODEL = "bench-model"

# The design this project avoids: scan every capable node and count its live leases.
NAIVE_SELECT = """
local base, model, lease, ttl = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', base .. 'model:' .. model .. ':nodes', now, '+inf')
local best, best_count = nil, nil
for _, id in ipairs(ids) do
  local count = redis.call('ZCOUNT', base .. 'leases:' .. id, now, '+inf')
  if best == nil or count < best_count then best, best_count = id, count end
end
if best then redis.call('ZADD', base .. 'leases:' .. best, now + ttl, lease) end
return best
"""


@dataclass
class CallStats:
    calls: int
    server_us: float
    client_p50_us: float
    client_p99_us: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def commandstats(redis: Redis) -> dict[str, tuple[int, float]]:
    """command → (calls, total µs) since the last CONFIG RESETSTAT."""
    info = await redis.info("commandstats")
    out: dict[str, tuple[int, float]] = {}
    for name, value in info.items():
        if name.startswith("cmdstat_") and isinstance(value, dict):
            out[name[len("cmdstat_") :]] = (int(value["calls"]), float(value["usec"]))
    return out


#: How a script call shows in commandstats: the fleet's scripts run with FCALL where the
#: store has Functions, EVALSHA otherwise (and the naive scan is always EVALSHA).
SCRIPT_COMMANDS = ("evalsha", "fcall", "fcall_ro")


def script_totals(stats: dict[str, tuple[int, float]]) -> tuple[int, float]:
    """Script calls and their total server µs."""
    picked = [stats.get(c, (0, 0.0)) for c in SCRIPT_COMMANDS]
    return sum(n for n, _ in picked), sum(u for _, u in picked)


async def measure(
    redis: Redis,
    call: Callable[[int], Awaitable[object]],
    *,
    calls: int,
    budget_s: float,
) -> CallStats:
    await redis.config_resetstat()
    latencies: list[float] = []
    deadline = time.perf_counter() + budget_s
    for i in range(calls):
        if time.perf_counter() > deadline:
            break
        start = time.perf_counter()
        await call(i)
        latencies.append((time.perf_counter() - start) * 1e6)
    stats = script_totals(await commandstats(redis))
    return CallStats(
        calls=len(latencies),
        server_us=stats[1] / stats[0] if stats[0] else float("nan"),
        client_p50_us=statistics.median(latencies) if latencies else float("nan"),
        client_p99_us=percentile(latencies, 99),
    )


async def _populate(
    fleet: Fleet, count: int, models_of: Callable[[int], list[str]], max_concurrency: int
) -> list[Any]:
    registrations: list[Any] = []
    batch = 64
    for start in range(0, count, batch):
        registrations += await asyncio.gather(
            *(
                fleet.register(i, models_of(i), max_concurrency)
                for i in range(start, min(start + batch, count))
            )
        )
    return registrations


def _picker(fleet: Fleet, into: list[tuple[str, str]]) -> Callable[[int], Awaitable[None]]:
    """An acquire of MODEL per call, its (node, lease) kept in ``into`` for the release."""

    async def pick(_i: int) -> None:
        got = await fleet.acquire(MODEL)
        if got is None:
            raise RuntimeError("acquire found no node; the benchmark fleet is broken")
        into.append(got)

    return pick


async def _acquire_release(
    redis: Redis, fleet: Fleet, calls: int, budget_s: float
) -> tuple[CallStats, CallStats]:
    granted: list[tuple[str, str]] = []
    pick = _picker(fleet, granted)

    async def give_back(i: int) -> None:
        await fleet.release(*granted[i])

    acquire = await measure(redis, pick, calls=calls, budget_s=budget_s)
    release = await measure(redis, give_back, calls=len(granted), budget_s=budget_s)
    return acquire, release


async def _naive_scan(
    redis: Redis, naive: Any, base: str, calls: int, budget_s: float
) -> CallStats:
    await naive(keys=[base], args=[MODEL, "warm", 60000])

    async def pick(i: int) -> None:
        await naive(keys=[base], args=[MODEL, f"naive-{i}", 60000])

    return await measure(redis, pick, calls=calls, budget_s=budget_s)


async def selection_cost(
    redis: Redis, sizes: list[int], calls: int, budget_s: float
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    naive = redis.register_script(NAIVE_SELECT)
    for size in sizes:
        await redis.flushall()
        fleet = Fleet(redis)
        await _populate(fleet, size, lambda _i: [MODEL], 100_000)
        await fleet.acquire(MODEL)  # loads the scripts before the counters reset
        acquire, release = await _acquire_release(redis, fleet, calls, budget_s)
        scan = await _naive_scan(redis, naive, fleet.keys.base, calls, budget_s)
        rows.append(
            {
                "nodes": size,
                "acquire": acquire.as_dict(),
                "release": release.as_dict(),
                "naive_scan": scan.as_dict(),
            }
        )
        print(
            f"  selection at {size:>6} nodes: acquire {acquire.server_us:7.1f} µs server, "
            f"release {release.server_us:6.1f} µs, naive scan {scan.server_us:9.1f} µs",
            flush=True,
        )
    return rows


async def _acquire_cost(
    redis: Redis, fleet: Fleet, affinity_of: Callable[[int], Affinity], calls: int, budget_s: float
) -> dict[str, Any]:
    """Acquire (then release, outside the measurement) with the given affinity per call:
    server µs per acquire, script calls (round trips) and Redis commands per acquire."""
    held: list[tuple[str, str]] = []

    async def pick(i: int) -> None:
        got = await fleet.acquire(MODEL, affinity_of(i))
        if got is None:
            raise RuntimeError("acquire found no node; the benchmark fleet is broken")
        held.append(got)

    stats = await measure(redis, pick, calls=calls, budget_s=budget_s)
    inner = await commandstats(redis)
    script_calls = script_totals(inner)[0]
    commands = sum(
        n for name, (n, _) in inner.items() if name not in (*SCRIPT_COMMANDS, "config|resetstat")
    )
    for node_id, lease in held:
        await fleet.release(node_id, lease)
    return {
        **stats.as_dict(),
        "round_trips": script_calls / stats.calls,
        "commands": commands / stats.calls,
    }


async def affinity_cost(
    redis: Redis, nodes: int, calls: int, budget_s: float, conversations: int = 200
) -> list[dict[str, Any]]:
    """The acquire script with affinity off, on with a pin to follow (three keys, the
    pinned node usually not the least loaded one), and on with no pin yet (three new keys)."""
    await redis.flushall()
    fleet = Fleet(redis)
    await _populate(fleet, nodes, lambda _i: [MODEL], 100_000)
    await fleet.acquire(MODEL)

    def conversation(i: int) -> Affinity:
        c = i % conversations
        keys = (f"o{c:021d}", f"b2{c:020d}", f"b1{c:020d}")
        return Affinity(keys=keys, ttl_ms=600_000, margin=500_000)

    def fresh(i: int) -> Affinity:
        return Affinity(keys=(f"n{i:023d}", f"m{i:023d}", f"l{i:023d}"), ttl_ms=600_000, margin=0)

    for i in range(conversations):  # the pins exist before the "hit" row
        await fleet.acquire(MODEL, conversation(i))
    rows = []
    for name, affinity_of in (
        ("off", lambda _i: Affinity()),
        ("on, pinned", conversation),
        ("on, new", fresh),
    ):
        row = {
            "affinity": name,
            "nodes": nodes,
            **await _acquire_cost(redis, fleet, affinity_of, calls, budget_s),
        }
        rows.append(row)
        print(
            f"  acquire, affinity {name:<10}: {row['server_us']:6.1f} µs server, "
            f"{row['round_trips']:.0f} round trip, {row['commands']:.1f} commands",
            flush=True,
        )
    return rows


async def _queue_row(redis: Redis, tenants: int, waiting: int, hand_offs: int) -> dict[str, Any]:
    await redis.flushall()
    fleet = Fleet(redis)
    await _populate(fleet, 1, lambda _i: [MODEL], 1)
    holder = await fleet.ask(MODEL, uuid.uuid4().hex)
    assert isinstance(holder, Granted)
    who = [Tenancy(f"t{k}", 5, 1 + k % 3) for k in range(tenants)]
    order: dict[str, tuple[int, Tenancy]] = {}

    async def join(i: int) -> None:
        ticket = f"w{i:07d}"
        got = await fleet.ask(MODEL, ticket, who[i % tenants])
        assert isinstance(got, Queued), got
        order[ticket] = (got.order, who[i % tenants])

    joined = await measure(redis, join, calls=waiting, budget_s=60)
    held = (holder.node_id, holder.lease_id)
    latencies: list[float] = []
    await redis.config_resetstat()
    for _ in range(min(hand_offs, len(order))):
        head = min(order, key=lambda t: (order[t][0], t))
        start = time.perf_counter()
        await fleet.release(*held)
        got = await fleet.ask(MODEL, head, order.pop(head)[1])
        latencies.append((time.perf_counter() - start) * 1e6)
        assert isinstance(got, Granted), got
        held = (got.node_id, got.lease_id)
    calls, usec = script_totals(await commandstats(redis))
    return {
        "tenants": tenants,
        "queued": waiting,
        "join_server_us": joined.server_us,
        # Release and acquire are both script calls; the pair's server time per hand-off.
        "hand_off_server_us": usec / (calls / 2) if calls else float("nan"),
        "hand_off_p50_us": statistics.median(latencies),
        "hand_off_p99_us": percentile(latencies, 99),
    }


async def queue_cost(
    redis: Redis, tenant_counts: list[int], waiting: int, hand_offs: int
) -> list[dict[str, Any]]:
    """The queue with 1, 10 or 100 tenants waiting (``waiting`` tickets in all) on a node
    whose one slot is taken: server µs of an arrival joining the queue, of a hand-off
    (release, then the head's acquire), and the hand-off's client p50/p99. The first row is
    the common path: nothing queued, a free slot (acquire server µs)."""
    await redis.flushall()
    fleet = Fleet(redis)
    await _populate(fleet, 1, lambda _i: [MODEL], 1)

    async def free(_i: int) -> None:
        got = await fleet.ask(MODEL, uuid.uuid4().hex)
        assert isinstance(got, Granted), got
        await fleet.release(got.node_id, got.lease_id)

    common = await measure(redis, free, calls=hand_offs, budget_s=30)
    rows: list[dict[str, Any]] = [
        {"tenants": 0, "queued": 0, "free_slot_pair_server_us": common.server_us * 2}
    ]
    for tenants in tenant_counts:
        rows.append(await _queue_row(redis, tenants, waiting, hand_offs))
    for row in rows:
        print(f"  queue {row}", flush=True)
    return rows


async def memory_per_node(
    redis: Redis, nodes: int, models_per_node: int = 20, pool: int = 100
) -> dict[str, Any]:
    await redis.flushall()
    fleet = Fleet(redis)
    await fleet.register(0, [MODEL], 4)  # fixed costs (script cache, shared keys) out of the delta
    await redis.flushall()
    before = int((await redis.info("memory"))["used_memory"])

    def models_of(i: int) -> list[str]:
        return [f"org/model-{(i * 7 + j) % pool}-Q4_K_M.gguf" for j in range(models_per_node)]

    regs = await _populate(fleet, nodes, models_of, 8)
    for i, reg in enumerate(regs):
        await fleet.heartbeat(reg, models_of(i))
    after = int((await redis.info("memory"))["used_memory"])
    sample = await redis.memory_usage(fleet.keys.node(regs[0].node_id)) or 0
    return {
        "nodes": nodes,
        "models_per_node": models_per_node,
        "model_pool": pool,
        "bytes_per_node": (after - before) / nodes,
        "node_hash_bytes": int(sample),
    }


async def heartbeat_cost(redis: Redis, nodes: int, calls: int, budget_s: float) -> dict[str, Any]:
    await redis.flushall()
    fleet = Fleet(redis)
    models = [f"org/model-{j}-Q4_K_M.gguf" for j in range(20)]
    regs = await _populate(fleet, nodes, lambda _i: models, 8)
    # The first beat after registering carries a latency the registration did not (a
    # changed floor, every entry rewritten); the row is the steady state after it.
    for reg in regs:
        await fleet.heartbeat(reg, models)
    stats = await measure(
        redis,
        lambda i: fleet.heartbeat(regs[i % len(regs)], models),
        calls=calls,
        budget_s=budget_s,
    )
    return {"nodes": nodes, "models_per_node": len(models), **stats.as_dict()}


async def run_micro(
    port: int, *, sizes: list[int], calls: int, budget_s: float, memory_nodes: int
) -> dict[str, Any]:
    redis = Redis(host="127.0.0.1", port=port)
    try:
        result: dict[str, Any] = {}
        result["selection"] = await selection_cost(redis, sizes, calls, budget_s)
        result["affinity"] = await affinity_cost(redis, 100, calls, budget_s)
        result["queue"] = await queue_cost(redis, [1, 10, 100], 300, 200)
        result["heartbeat"] = await heartbeat_cost(redis, 1000, calls, budget_s)
        print(f"  heartbeat script: {result['heartbeat']['server_us']:.1f} µs server", flush=True)
        result["memory"] = await memory_per_node(redis, memory_nodes)
        print(
            f"  memory: {result['memory']['bytes_per_node']:.0f} B per node with 20 models",
            flush=True,
        )
        # The full axis (10,000 nodes too) is `python -m tests.benchmarks.micro`.
        result["models_per_node"] = await models_per_node_cost(
            redis, [memory_nodes], [1, 20, 50, 100], calls, budget_s
        )
        return result
    finally:
        await redis.flushall()
        await redis.aclose()


AXIS_POOL = 200  # the other models a node serves are drawn from this many


def _axis_models(index: int, per_node: int, flip: int = 0) -> list[str]:
    """The probed model plus ``per_node - 1`` others; ``flip`` swaps the last one for
    another model (a heartbeat whose executable set changed by one model)."""
    others = [f"org/model-{(index * 7 + j) % AXIS_POOL}-Q4_K_M.gguf" for j in range(per_node - 1)]
    if others and flip:
        others[-1] = f"org/alt-{index % AXIS_POOL}-Q4_K_M.gguf"
    return [MODEL, *others]


#: What the harness itself sends between measurements, left out of commands per call.
_NOT_INSIDE = frozenset({*SCRIPT_COMMANDS, "config|resetstat", "info", "config"})


async def _measure_scripts(
    redis: Redis, call: Callable[[int], Awaitable[object]], calls: int, budget_s: float
) -> tuple[float, float]:
    """Server µs per script call, and the commands each one ran inside."""
    await redis.config_resetstat()
    deadline = time.perf_counter() + budget_s
    for i in range(calls):
        if time.perf_counter() > deadline:
            break
        await call(i)
    stats = await commandstats(redis)
    n, usec = script_totals(stats)
    inner = sum(c for name, (c, _) in stats.items() if name not in _NOT_INSIDE)
    if not n:
        return float("nan"), float("nan")
    return usec / n, inner / n


async def _axis_row(
    redis: Redis, nodes: int, per_node: int, calls: int, budget_s: float
) -> dict[str, Any]:
    await redis.flushall()
    fleet = Fleet(redis)
    await fleet.register(0, [MODEL], 4)  # scripts loaded before the memory baseline
    await redis.flushall()
    before = int((await redis.info("memory"))["used_memory"])
    regs = await _populate(fleet, nodes, lambda i: _axis_models(i, per_node), 8)
    for i in range(0, nodes, 64):
        await asyncio.gather(
            *(
                fleet.heartbeat(regs[j], _axis_models(j, per_node))
                for j in range(i, min(i + 64, nodes))
            )
        )
    after = int((await redis.info("memory"))["used_memory"])
    held: list[tuple[str, str]] = []
    acquire, _ = await _measure_scripts(redis, _picker(fleet, held), calls, budget_s)
    release, _ = await _measure_scripts(
        redis, lambda i: fleet.release(*held[i]), len(held), budget_s
    )
    unchanged, unchanged_cmds = await _measure_scripts(
        redis,
        lambda i: fleet.heartbeat(regs[i % nodes], _axis_models(i % nodes, per_node)),
        calls,
        budget_s,
    )
    flips = [0] * nodes

    async def flip(i: int) -> None:
        j = i % nodes
        flips[j] ^= 1
        await fleet.heartbeat(regs[j], _axis_models(j, per_node, flips[j]))

    nan = float("nan")
    changed, changed_cmds = (
        await _measure_scripts(redis, flip, calls, budget_s) if per_node > 1 else (nan, nan)
    )
    row = {
        "nodes": nodes,
        "models_per_node": per_node,
        "acquire_us": acquire,
        "release_us": release,
        "heartbeat_unchanged_us": unchanged,
        "heartbeat_one_changed_us": changed,
        "heartbeat_unchanged_commands": unchanged_cmds,
        "heartbeat_one_changed_commands": changed_cmds,
        "bytes_per_node": (after - before) / nodes,
    }
    print(
        f"  {nodes:>6} nodes x {per_node:>3} models: acquire {acquire:6.1f} µs, "
        f"release {release:6.1f} µs, heartbeat {unchanged:6.1f} µs unchanged / "
        f"{changed:6.1f} µs one model changed ({unchanged_cmds:.1f} / {changed_cmds:.1f} "
        f"commands), {row['bytes_per_node']:7.0f} B per node",
        flush=True,
    )
    return row


async def models_per_node_cost(
    redis: Redis, fleet_sizes: list[int], per_node: list[int], calls: int, budget_s: float
) -> list[dict[str, Any]]:
    """Server µs of acquire, release and heartbeats (nothing changed / one executable model
    swapped), and Redis bytes per node, along models per node; bytes per (node, model) is
    the slope between the 1-model row and each wider one."""
    rows: list[dict[str, Any]] = []
    for nodes in fleet_sizes:
        base: dict[str, Any] | None = None
        for width in per_node:
            row = await _axis_row(redis, nodes, width, calls, budget_s)
            if width == 1:
                base = row
            elif base is not None:
                row["bytes_per_node_model"] = (row["bytes_per_node"] - base["bytes_per_node"]) / (
                    width - 1
                )
            rows.append(row)
    return rows


def _main() -> None:
    import argparse
    import json

    from tests.redis_server import running_redis_server

    p = argparse.ArgumentParser(description="the models-per-node axis of the micro-benchmarks")
    p.add_argument("--nodes", default="1000,10000")
    p.add_argument("--models", default="1,20,50,100")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--budget", type=float, default=5.0)
    p.add_argument("--json", default="")
    args = p.parse_args()

    async def go(port: int) -> list[dict[str, Any]]:
        redis = Redis(host="127.0.0.1", port=port)
        try:
            return await models_per_node_cost(
                redis,
                [int(n) for n in args.nodes.split(",")],
                [int(m) for m in args.models.split(",")],
                args.calls,
                args.budget,
            )
        finally:
            await redis.aclose()

    with running_redis_server() as server:
        rows = asyncio.run(go(server.port))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    _main()
