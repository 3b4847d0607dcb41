"""A fleet-scale simulation: ``python -m tests.benchmarks.fleet_sim [--quick]``.

One real redis-server, two real router replicas (``llm-router serve``) on it, and the
benchmarks' fast upstream, which every virtual node points at, so requests are really
proxied. Virtual nodes (default up to 10,000, 20-50 models each from a catalog of 330) are
registered once and heartbeat every 5 s, spread evenly over the interval; a small share of
heartbeats changes one model or the runtime load. They are driven, by default, straight
through the registry and script layer from this process, every call on one multiplexed
Redis link (``--via http`` speaks the real node protocol to the replicas instead, for a
smaller fleet: one Python process cannot post thousands of heartbeats a second over HTTP
without measuring itself). An open-loop load generator (its own process) sends a fixed
request rate through both replicas, for models served by many nodes and a few served by
three.

At each fleet size (the fleet grows between points) it measures Redis's CPU (``INFO CPU``
deltas over wall time) with heartbeats only and with the request load too, the heartbeat
latency as the driver sees the script call, the scripts' server time from SLOWLOG (every
command logged during a short sampling tail), the requests' latency through the routers,
and Redis memory per node and per (node, model); then extrapolates from the measured costs
to the largest fleet one Redis carries at the request rate below a CPU ceiling. Prints the
tables and writes them, with a JSON file, into ``tests/benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis
from tests.benchmarks import fleet_nodes as fn
from tests.benchmarks.fleet_adapter import (
    Fleet,
    HeartbeatRequest,
    Registration,
    multiplexed_registry,
    script_names_by_sha,
)
from tests.benchmarks.loadgen import percentile
from tests.benchmarks.micro import _populate
from tests.benchmarks.procs import ProcessStack
from tests.benchmarks.report import _fmt, _table
from tests.benchmarks.run import _terminate_on_sigterm, machine_info
from tests.benchmarks.targets import REPO, Settings, _start_router, start_redis, start_upstream

RESULTS = Path(__file__).resolve().parent / "results"
#: The router's defaults (BRIEF §3): a beat every 5 s, offline after 10 s without one.
HEARTBEAT_S = 5.0
NODE_TIMEOUT_MS = 10_000
FORGET_MS = 86_400_000
REPLICAS = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.fleet_sim", description=__doc__)
    p.add_argument("--quick", action="store_true", help="1,000 nodes, short windows (~1 min)")
    p.add_argument("--nodes", default="1000,3000,10000", help="fleet sizes, measured in turn")
    p.add_argument("--models-per-node", default="20-50", help="LO-HI models per node")
    p.add_argument("--catalog", type=int, default=300, help="popular model ids")
    p.add_argument("--rare-models", type=int, default=30, help="model ids on a few nodes each")
    p.add_argument("--rare-nodes", type=int, default=3, help="nodes per rare model")
    p.add_argument("--zipf", type=float, default=0.8, help="skew of the popular models")
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s driven (open loop)")
    p.add_argument(
        "--target-rate", type=float, default=1000.0, help="requests/s the extrapolation assumes"
    )
    p.add_argument("--request-timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--rare-share", type=float, default=0.05, help="share of requests for rare")
    p.add_argument("--top-models", type=int, default=50, help="popular models requested")
    p.add_argument("--change-share", type=float, default=0.05, help="beats that change a thing")
    p.add_argument("--idle", type=float, help="heartbeat-only seconds per point (15; quick 5)")
    p.add_argument("--duration", type=float, help="seconds with requests per point (30; quick 15)")
    p.add_argument("--sample", type=float, default=2.0, help="SLOWLOG sampling seconds")
    p.add_argument(
        "--slowlog-us", type=int, default=10, help="SLOWLOG threshold while sampling (µs)"
    )
    p.add_argument("--via", choices=("scripts", "http"), default="scripts")
    p.add_argument("--ceiling", type=float, default=0.80, help="Redis CPU ceiling (fraction)")
    p.add_argument("--memory-probe", type=int, default=0, help="nodes per memory-split probe")
    p.add_argument("--nice", type=int, default=10, help="niceness for this run and its children")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--render", type=Path, help="print the tables of a results JSON, run nothing")
    args = p.parse_args(argv)
    if args.quick:
        args.nodes = "1000"
        args.memory_probe = 0
        args.request_timeout = min(args.request_timeout, 5.0)
    args.idle = args.idle or (5.0 if args.quick else 15.0)
    args.duration = args.duration or (15.0 if args.quick else 30.0)
    args.sizes = [int(n) for n in args.nodes.split(",") if n.strip()]
    lo, _, hi = args.models_per_node.partition("-")
    args.models_range = (int(lo), int(hi or lo))
    return args


# --- Redis probes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    wall: float
    cpu_s: float
    script_calls: int  # FCALL (the function library) and EVALSHA together
    script_usec: float
    commands: int


async def snapshot(redis: Redis) -> Snapshot:
    cpu = await redis.info("cpu")
    stats = await redis.info("commandstats")
    runs = [stats.get(f"cmdstat_{c}", {"calls": 0, "usec": 0}) for c in ("fcall", "evalsha")]
    commands = sum(
        int(v["calls"])
        for k, v in stats.items()
        if k.startswith("cmdstat_") and isinstance(v, dict)
    )
    return Snapshot(
        wall=time.monotonic(),
        cpu_s=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        script_calls=sum(int(r["calls"]) for r in runs),
        script_usec=sum(float(r["usec"]) for r in runs),
        commands=commands,
    )


def delta(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    wall = b.wall - a.wall
    calls = b.script_calls - a.script_calls
    return {
        "seconds": wall,
        "redis_cpu_pct": (b.cpu_s - a.cpu_s) / wall * 100,
        "script_calls_per_s": calls / wall,
        "script_server_us_mean": (b.script_usec - a.script_usec) / calls if calls else None,
        "script_server_us_per_s": (b.script_usec - a.script_usec) / wall,
        "commands_per_s": (b.commands - a.commands) / wall,
    }


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


class SlowlogSample:
    """Every command Redis runs, with its server time, while sampling (SLOWLOG at 0 µs);
    the settings are put back afterwards."""

    MAX = 20_000

    def __init__(self, redis: Redis, shas: dict[str, str], slower_than_us: int) -> None:
        self.redis = redis
        self.shas = shas
        self.slower_than_us = slower_than_us
        self.saved: dict[Any, Any] = {}

    async def start(self) -> None:
        self.saved = dict(await self.redis.config_get("slowlog-*"))
        await self.redis.config_set("slowlog-max-len", self.MAX)
        await self.redis.config_set("slowlog-log-slower-than", self.slower_than_us)
        await self.redis.slowlog_reset()

    async def finish(self, seconds: float) -> dict[str, Any]:
        await self.redis.config_set("slowlog-log-slower-than", -1)
        entries = await self.redis.slowlog_get(self.MAX)
        for name, value in self.saved.items():
            await self.redis.config_set(name, value)
        await self.redis.slowlog_reset()
        times: dict[str, list[float]] = {}
        for entry in entries:
            raw, client = entry["command"], entry.get("client_address", b"")
            if (client.decode() if isinstance(client, bytes) else str(client)) == "?:0":
                continue  # run inside a script: already in that script's duration
            words = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw).split()
            if not words:
                continue
            verb = words[0].lower()
            scripted = verb in ("evalsha", "fcall") and len(words) > 1
            name = self.shas.get(words[1], "other script") if scripted else verb
            times.setdefault(name, []).append(float(entry["duration"]))
        return {
            name: {
                "calls_per_s": len(us) / seconds,
                "total_us_per_s": sum(us) / seconds,
                "mean_us": sum(us) / len(us),
                "p50_us": percentile(us, 50),
                "p99_us": percentile(us, 99),
            }
            for name, us in sorted(times.items(), key=lambda kv: -sum(kv[1]))
        }


#: Who a top-level command in SLOWLOG is charged to; everything else (the replicas'
#: background scripts and reads, this harness's probes) is overhead.
REQUEST_PATH = frozenset({"acquire", "release", "renew", "fail", "leave_queue", "rate_limit"})
NODE_PATH = frozenset({"heartbeat", "register"})


_PATHS = ("requests", "nodes", "other")


def shares(slowlog: dict[str, Any]) -> dict[str, float]:
    """Each path's share of Redis's command time in the sample."""
    total = sum(row["total_us_per_s"] for row in slowlog.values()) or 1.0
    requests = sum(r["total_us_per_s"] for n, r in slowlog.items() if n in REQUEST_PATH)
    nodes = sum(r["total_us_per_s"] for n, r in slowlog.items() if n in NODE_PATH)
    return {
        "requests": requests / total,
        "nodes": nodes / total,
        "other": 1 - (requests + nodes) / total,
    }


_SCRIPT_SECONDS = "llm_router_redis_command_seconds"


async def script_histograms(
    session: aiohttp.ClientSession, urls: list[str]
) -> dict[str, dict[float, float]]:
    """The replicas' own round-trip histograms of their script calls, summed over replicas:
    script -> {bucket upper bound (s): cumulative count}, plus ``sum`` under bound -1."""
    out: dict[str, dict[float, float]] = {}
    for url in urls:
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if not line.startswith(_SCRIPT_SECONDS):
                continue
            name_labels, _, value = line.rpartition(" ")
            labels = dict(
                part.split("=", 1) for part in name_labels.partition("{")[2].rstrip("}").split(",")
            )
            script = labels.get("command", "").strip('"')
            bucket = out.setdefault(script, {})
            if name_labels.startswith(f"{_SCRIPT_SECONDS}_bucket"):
                bound = float(labels["le"].strip('"').replace("+Inf", "inf"))
                bucket[bound] = bucket.get(bound, 0.0) + float(value)
            elif name_labels.startswith(f"{_SCRIPT_SECONDS}_sum"):
                bucket[-1.0] = bucket.get(-1.0, 0.0) + float(value)
    return out


def _quantile(cumulative: list[tuple[float, float]], q: float) -> float | None:
    """Quantile from cumulative bucket counts, linear within the bucket it falls in."""
    total = cumulative[-1][1] if cumulative else 0.0
    if total <= 0:
        return None
    want, low, below = q * total, 0.0, 0.0
    for bound, count in cumulative:
        if count >= want:
            if bound == float("inf"):
                return low
            return low + (bound - low) * (want - below) / max(count - below, 1e-9)
        low, below = bound, count
    return low


def round_trips(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]], seconds: float
) -> dict[str, Any]:
    """Per script: calls/s, mean, p50 and p99 (ms) of the replicas' round trips between two
    scrapes (bucket resolution: the quantiles are interpolated within a bucket)."""
    out: dict[str, Any] = {}
    for script, now in after.items():
        was = before.get(script, {})
        diff = sorted((b, now[b] - was.get(b, 0.0)) for b in now if b >= 0)
        calls = diff[-1][1] if diff else 0.0
        if calls <= 0:
            continue
        total_s = now.get(-1.0, 0.0) - was.get(-1.0, 0.0)
        p50, p99 = _quantile(diff, 0.5), _quantile(diff, 0.99)
        out[script] = {
            "calls_per_s": calls / seconds,
            "mean_ms": total_s / calls * 1000,
            "p50_ms": None if p50 is None else p50 * 1000,
            "p99_ms": None if p99 is None else p99 * 1000,
        }
    return out


# --- the measured phases ----------------------------------------------------------------------


async def heartbeats_only(redis: Redis, clock: fn.HeartbeatClock, seconds: float) -> dict[str, Any]:
    a = await snapshot(redis)
    clock.measure()
    await asyncio.sleep(seconds)
    window = clock.end_measure()
    b = await snapshot(redis)
    return {**delta(a, b), "heartbeats": window.summary(b.wall - a.wall)}


async def with_requests(
    redis: Redis,
    clock: fn.HeartbeatClock,
    args: argparse.Namespace,
    urls: list[str],
    mix_file: Path,
    shas: dict[str, str],
    log: Path,
    session: aiohttp.ClientSession,
) -> dict[str, Any]:
    argv = [
        sys.executable, "-m", "tests.benchmarks.fleet_load", "--urls", ",".join(urls),
        "--mix", str(mix_file), "--rate", str(args.rate), "--duration", str(args.duration),
        "--sample", str(args.sample), "--warmup", "3", "--seed", str(args.seed),
        "--timeout", str(args.request_timeout),
    ]  # fmt: skip
    with log.open("ab") as errors:
        child = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, stdout=subprocess.PIPE, stderr=errors
        )
    assert child.stdout is not None
    out: dict[str, Any] = {}
    slowlog = SlowlogSample(redis, shas, args.slowlog_us)
    a = b = None
    try:
        async for raw in child.stdout:
            line = raw.decode().strip()
            # Redis and the clock first: a scrape of busy replicas may take a while.
            if line == "START":
                a = await snapshot(redis)
                clock.measure()
                scraped = asyncio.create_task(script_histograms(session, urls))
            elif line == "END" and a is not None:
                window = clock.end_measure()
                b = await snapshot(redis)
                await slowlog.start()
                sampled_from = time.monotonic()
                out = {**delta(a, b), "heartbeats": window.summary(b.wall - a.wall)}
                out["router_round_trips"] = round_trips(
                    await scraped, await script_histograms(session, urls), b.wall - a.wall
                )
            elif line == "SAMPLE_END" and b is not None:
                out["slowlog"] = await slowlog.finish(time.monotonic() - sampled_from)
            elif line.startswith("RESULT "):
                out["requests"] = json.loads(line[len("RESULT ") :])
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if "requests" not in out:
        tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-500:]
        raise RuntimeError(f"the load generator gave no result (rc={child.returncode}): {tail}")
    return out


async def memory_probe(port: int, nodes: int, pool: int) -> dict[str, Any]:
    """Bytes per node with 20 models, then with the same nodes beating 50: the growth per
    added model is one (node, model) entry's cost (its place in the model's sets and the
    node's lists); the rest of the 20-model figure is the node's own."""
    redis = Redis(host="127.0.0.1", port=port)

    def models(i: int, count: int) -> list[str]:
        return [f"org/fleet-model-{(i * 7 + j) % pool:03d}-Q4_K_M.gguf" for j in range(count)]

    async def beat_all(regs: list[Registration], count: int) -> int:
        for start in range(0, len(regs), 64):
            await asyncio.gather(
                *(
                    fleet.registry.heartbeat(
                        HeartbeatRequest(
                            node_id=reg.node_id,
                            models=models(i, count),
                            executable_models=models(i, count),
                        ),
                        reg.token,
                    )
                    for i, reg in enumerate(regs[start : start + 64], start)
                )
            )
        return await used_memory(redis)

    try:
        fleet = Fleet(redis)
        await fleet.register(0, ["probe"], 4)  # the scripts load before the baseline
        await redis.flushall()
        base = await used_memory(redis)
        regs = await _populate(fleet, nodes, lambda i: models(i, 20), 4)
        at20 = (await beat_all(regs, 20) - base) / nodes
        at50 = (await beat_all(regs, 50) - base) / nodes
        await redis.flushall()
    finally:
        await redis.aclose()
    per_pair = (at50 - at20) / 30
    return {
        "nodes": nodes,
        "bytes_per_node_20": at20,
        "bytes_per_node_50": at50,
        "per_pair_bytes": per_pair,
        "per_node_fixed_bytes": at20 - 20 * per_pair,
    }


def costs(point: dict[str, Any]) -> dict[str, Any]:
    """Redis CPU µs per heartbeat: the heartbeat-only window's CPU per script call Redis ran
    (the replicas' idle background included). Per request: the loaded window's CPU times the request
    path's share of command time in the SLOWLOG sample, per request completed (a
    difference of two windows' CPU would drown a small request load in the heartbeats'
    noise)."""
    idle, busy = point["idle"], point["busy"]
    # What Redis ran, not what the driver saw answered: a driver starved of CPU reads its
    # replies late, but Redis did the work (the replicas' few background calls included).
    beats = idle["script_calls_per_s"]
    rps = busy["requests"]["achieved_rps"]
    split = shares(busy.get("slowlog", {}))
    cpu = busy["redis_cpu_pct"] / 100 * 1e6  # µs of CPU per second
    node_calls = busy.get("slowlog", {})
    busy_beats = sum(node_calls.get(n, {}).get("calls_per_s", 0.0) for n in NODE_PATH)
    return {
        "per_heartbeat_us": idle["redis_cpu_pct"] / 100 * 1e6 / beats if beats else None,
        "per_request_us": cpu * split["requests"] / rps if rps else None,
        "per_heartbeat_loaded_us": cpu * split["nodes"] / busy_beats if busy_beats else None,
        "shares": split,
    }


def kept_up(point: dict[str, Any]) -> bool:
    """Redis ran every heartbeat due in the heartbeat-only window and sampled the request
    path: the point's costs are measured, not bounded by a saturated server."""
    due = point["nodes"] / HEARTBEAT_S
    sampled = point["costs"]["shares"]["requests"] > 0
    return bool(point["idle"]["script_calls_per_s"] >= 0.95 * due and sampled)


def basis(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest point that kept up, else the smallest (the least saturated)."""
    return next((p for p in reversed(points) if kept_up(p)), points[0])


def extrapolate(point: dict[str, Any], rate: float, ceiling: float) -> dict[str, Any]:
    c = point["costs"]
    beat, req = c["per_heartbeat_us"], c["per_request_us"]
    if not beat or req is None:
        return {"max_nodes": None, "arithmetic": "not enough data"}
    room = ceiling - rate * max(req, 0.0) / 1e6
    nodes = max(0.0, HEARTBEAT_S * room / (beat / 1e6))
    arithmetic = (
        f"N = {HEARTBEAT_S:g} s * ({ceiling:.2f} - {rate:,.0f}/s * {req:.1f} µs) / {beat:.1f} µs"
        f" = {HEARTBEAT_S:g} * {room:.3f} / {beat / 1e6:.7f} s = {nodes:,.0f} nodes"
        f" (heartbeats alone: {HEARTBEAT_S * ceiling / (beat / 1e6):,.0f} nodes; requests alone:"
        f" {ceiling / (req / 1e6) if req > 0 else float('inf'):,.0f} req/s)"
    )
    return {"max_nodes": nodes, "arithmetic": arithmetic, "basis_nodes": point["nodes"]}


# --- the run ----------------------------------------------------------------------------------


async def simulate(
    args: argparse.Namespace,
    redis_port: int,
    upstream_port: int,
    urls: list[str],
    work: Path,
    header: dict[str, Any],
) -> dict[str, Any]:
    redis = Redis(host="127.0.0.1", port=redis_port, socket_timeout=60)
    shas = script_names_by_sha(redis)
    baseline = await used_memory(redis)
    catalog = fn.Catalog.make(args.catalog, args.rare_models, args.rare_nodes, args.zipf)
    rng = random.Random(args.seed)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    mux = None
    transport: fn.Transport
    if args.via == "scripts":
        registry, mux = multiplexed_registry(
            redis, redis_port, alive_ttl_ms=NODE_TIMEOUT_MS, forget_ms=FORGET_MS,
            client_name="fleet-sim-nodes",
        )  # fmt: skip
        transport = fn.ScriptTransport(registry, upstream_port)
    else:
        transport = fn.HttpTransport(session, urls, upstream_port)
    nodes: list[fn.VirtualNode] = []
    clock = fn.HeartbeatClock(
        transport, catalog, interval_s=HEARTBEAT_S, change_share=args.change_share
    )
    ticking = asyncio.create_task(clock.run())
    points: list[dict[str, Any]] = []
    partial = RESULTS / "fleet-sim-partial.json"  # what is measured so far, if a run dies
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        for size in args.sizes:
            print(f"  growing the fleet to {size:,} nodes ({transport.name})", flush=True)
            took = await fn.grow(nodes, size, clock, rng, args.models_range)
            await asyncio.sleep(HEARTBEAT_S)  # every node beats once on its own tick
            memory = await used_memory(redis) - baseline
            spread = fn.spread_summary(nodes, catalog)
            idle = await heartbeats_only(redis, clock, args.idle)
            print(
                f"  {size:>6,} nodes, heartbeats only: Redis {idle['redis_cpu_pct']:5.1f} % CPU,"
                f" {idle['heartbeats']['beats_per_s']:,.0f} beats/s",
                flush=True,
            )
            mix = fn.request_mix(nodes, catalog, args.rare_share, args.top_models)
            mix_file = work / f"mix-{size}.json"
            mix_file.write_text(json.dumps(mix))
            busy = await with_requests(
                redis, clock, args, urls, mix_file, shas, work / "logs" / "fleet_load.log", session
            )
            req = busy["requests"]
            print(
                f"  {size:>6,} nodes, + {req['achieved_rps']:,.0f} req/s: Redis "
                f"{busy['redis_cpu_pct']:5.1f} % CPU, request p50 {_fmt(req['p50_ms'])} ms "
                f"p99 {_fmt(req['p99_ms'])} ms",
                flush=True,
            )
            point = {
                "nodes": size,
                "register_s": took,
                "memory_bytes": memory,
                "bytes_per_node": memory / size,
                "bytes_per_pair": memory / spread["pairs"],
                "spread": spread,
                "mix_nodes": {
                    k: sorted(m["nodes"] for m in mix if m["class"] == k) for k in ("many", "few")
                },
                "idle": idle,
                "busy": busy,
            }
            point["costs"] = costs(point)
            points.append(point)
            so_far = {**header, "points": points, "extrapolation": {}}
            partial.write_text(json.dumps(so_far, indent=2))
    finally:
        await clock.stop()
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
        await session.close()
        if mux is not None:
            await mux.close()
        await redis.aclose()
    return {
        "points": points,
        "driver_errors": clock.errors,
        "extrapolation": extrapolate(basis(points), args.target_rate, args.ceiling)
        if points
        else {},
    }


def _pair(a: Any, b: Any, digits: int = 2) -> str:
    return f"{_fmt(a, digits)} / {_fmt(b, digits)}"


def _script(point: dict[str, Any], name: str) -> str:
    row = point["busy"].get("slowlog", {}).get(name)
    return "-" if row is None else _pair(row["p50_us"], row["p99_us"], 1)


def _round_trip(point: dict[str, Any], name: str) -> str:
    row = point["busy"].get("router_round_trips", {}).get(name)
    return "-" if row is None else _pair(row["p50_ms"], row["p99_ms"])


def markdown(result: dict[str, Any]) -> str:
    cfg, points = result["config"], result["points"]
    head = (
        f"Fleet simulation, {result['started']} (commit {result['commit']}), "
        f"{cfg['via']} driver, {cfg['models_per_node']} models per node from a catalog of "
        f"{cfg['catalog_size']}, heartbeat every {HEARTBEAT_S:g} s "
        f"({cfg['change_share']:.0%} change something), {cfg['rate']:,.0f} req/s asked "
        f"through {REPLICAS} replicas, windows {cfg['idle']:g} s idle / {cfg['duration']:g} s "
        f"loaded; machine: {result['machine']['cpus']} CPUs, load average "
        f"{result['load_average']} at the start (shared)."
    )
    fleet = _table(
        ["nodes", "(node, model) pairs", "nodes per model min / median / max",
         "heartbeats/s Redis ran (of due), heartbeats only",
         "Redis CPU % heartbeats only", "Redis CPU % + requests", "requests/s done (asked)",
         "request errors", "beats answered to the driver, with requests"],
        [
            [
                f"{p['nodes']:,}",
                f"{p['spread']['pairs']:,}",
                f"{p['spread']['nodes_per_model_min']} / {p['spread']['nodes_per_model_median']}"
                f" / {p['spread']['nodes_per_model_max']:,}",
                f"{_fmt(p['idle']['script_calls_per_s'])} of {p['nodes'] / HEARTBEAT_S:,.0f}",
                _fmt(p["idle"]["redis_cpu_pct"], 1),
                _fmt(p["busy"]["redis_cpu_pct"], 1),
                f"{_fmt(p['busy']['requests']['achieved_rps'])} ({cfg['rate']:,.0f})",
                str(
                    sum(v for k, v in p["busy"]["requests"]["statuses"].items() if k != "200")
                    + p["busy"]["requests"]["shed_at_in_flight_cap"]
                ),
                f"{p['busy']['heartbeats']['beats_per_s'] * HEARTBEAT_S / p['nodes']:.0%}",
            ]
            for p in points
        ],
    )  # fmt: skip
    latency = _table(
        ["nodes", "heartbeat p50 / p99 ms (driver)", "acquire round trip p50 / p99 ms (replicas)",
         "heartbeat µs p50 / p99 (SLOWLOG)", "acquire µs p50 / p99 (SLOWLOG)",
         "release µs p50 / p99 (SLOWLOG)", "request p50 / p99 ms, many-node models",
         "few-node models"],
        [
            [
                f"{p['nodes']:,}",
                _pair(p["busy"]["heartbeats"]["p50_ms"], p["busy"]["heartbeats"]["p99_ms"]),
                _round_trip(p, "acquire"),
                _script(p, "heartbeat"),
                _script(p, "acquire"),
                _script(p, "release"),
                *(
                    _pair(c.get("p50_ms"), c.get("p99_ms"))
                    for c in (
                        p["busy"]["requests"]["by_class"].get(k, {}) for k in ("many", "few")
                    )
                ),
            ]
            for p in points
        ],
    )  # fmt: skip
    memory = _table(
        ["nodes", "used_memory (fleet) MB", "bytes per node", "bytes per (node, model)",
         "Redis CPU µs per heartbeat (heartbeats only)", "(with requests)",
         "Redis CPU µs per request", "command time: requests / nodes / other"],
        [
            [
                f"{p['nodes']:,}",
                _fmt(p["memory_bytes"] / 1e6, 1),
                _fmt(p["bytes_per_node"]),
                _fmt(p["bytes_per_pair"]),
                _fmt(p["costs"]["per_heartbeat_us"], 1),
                _fmt(p["costs"]["per_heartbeat_loaded_us"], 1),
                _fmt(p["costs"]["per_request_us"], 1),
                " / ".join(f"{p['costs']['shares'][k]:.0%}" for k in _PATHS),
            ]
            for p in points
        ],
    )  # fmt: skip
    out = [head, "", fleet, "", latency, "", memory, ""]
    probe = result.get("memory_probe")
    if probe:
        out.append(
            f"Memory split ({probe['nodes']:,} nodes alone at 20 and at 50 models): "
            f"{_fmt(probe['bytes_per_node_20'])} and {_fmt(probe['bytes_per_node_50'])} bytes "
            f"per node, so ≈ {_fmt(probe['per_pair_bytes'])} bytes per (node, model) entry "
            f"and ≈ {_fmt(probe['per_node_fixed_bytes'])} bytes per node besides."
        )
    ext = result["extrapolation"]
    if ext.get("max_nodes") is not None:
        out.append(
            f"Largest fleet at {cfg['target_rate']:,.0f} req/s under {cfg['ceiling']:.0%} "
            "Redis CPU, "
            f"from the {ext['basis_nodes']:,}-node point's costs: {ext['arithmetic']}."
        )
    return "\n".join(out)


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
        check=False,
    )  # fmt: skip
    return done.stdout.strip() or "?"


def render(path: Path) -> str:
    """The tables of an earlier run, its costs recomputed from the raw windows."""
    result = json.loads(path.read_text())
    for point in result["points"]:
        point["costs"] = costs(point)
    if result["points"]:
        ceiling, rate = result["config"]["ceiling"], result["config"]["target_rate"]
        result["extrapolation"] = extrapolate(basis(result["points"]), rate, ceiling)
    result.setdefault("elapsed_s", None)
    return markdown(result)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render(args.render))
        return 0
    if args.nice:
        os.nice(args.nice)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    work = Path(tempfile.mkdtemp(prefix="llm-router-fleet-sim-"))
    cfg = Settings(work_dir=work, server_cpus=None, cache_dir=work, install_peers=False)
    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _commit(),
        "machine": machine_info(),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "config": {
            "via": args.via,
            "sizes": args.sizes,
            "models_per_node": args.models_per_node,
            "catalog_size": args.catalog + args.rare_models,
            "rare_nodes": args.rare_nodes,
            "rate": args.rate,
            "target_rate": args.target_rate,
            "rare_share": args.rare_share,
            "change_share": args.change_share,
            "idle": args.idle,
            "duration": args.duration,
            "ceiling": args.ceiling,
            "slowlog_us": args.slowlog_us,
        },
    }
    began = time.monotonic()
    try:
        with _terminate_on_sigterm(), ProcessStack(work / "logs") as stack:
            _, redis_port = start_redis(stack, cfg)
            if args.memory_probe:
                print(f"memory probe: {args.memory_probe:,} nodes at 20 and 50 models", flush=True)
                result["memory_probe"] = asyncio.run(
                    memory_probe(redis_port, args.memory_probe, args.catalog)
                )
            _, upstream_port = start_upstream(stack, cfg)
            url = f"redis://127.0.0.1:{redis_port}/0"
            urls = [
                f"http://127.0.0.1:{_start_router(stack, cfg, f'router-{i}', url)[1]}"
                for i in range(REPLICAS)
            ]
            print(f"redis :{redis_port}, routers {', '.join(urls)}", flush=True)
            result.update(
                asyncio.run(simulate(args, redis_port, upstream_port, urls, work, result))
            )
    except BaseException:
        print(f"failed; the processes' logs are in {work / 'logs'}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    result["elapsed_s"] = round(time.monotonic() - began, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = result["started"].replace(":", "").replace("-", "")
    (RESULTS / f"fleet-sim-{stamp}.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (RESULTS / "fleet-sim-latest.md").write_text(text + "\n")
    print()
    print(text)
    print(f"\nelapsed: {result['elapsed_s']} s; results in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
