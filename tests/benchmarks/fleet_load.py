"""Open-loop request load for the fleet simulation, run as its own process.

``python -m tests.benchmarks.fleet_load --urls U1,U2 --rate R --mix FILE ...`` sends
``R`` chat completions a second at fixed intervals (open loop: a slow answer never delays
the next request), alternating between the router replicas, for models drawn from the mix
file (``[{"model", "weight", "class"}]``). Latency runs from the moment a request was due,
so a late send counts against it (no coordinated omission). Phases: warm-up (not
measured), the measured window, then a sampling tail (load goes on, not measured) while the
parent reads Redis's SLOWLOG. It prints ``START``, ``END`` and ``SAMPLE_END`` as each phase
begins or ends, then one ``RESULT <json>`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tests.benchmarks.loadgen import percentile

#: Distinct conversations per model: bounded, so affinity pins stay a fixed, small set.
CONVERSATIONS = 16
TICK_S = 0.002


@dataclass
class Tally:
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    send_lag_ms: list[float] = field(default_factory=list)
    sent: int = 0
    shed: int = 0
    first_error: str = ""


def _bodies(mix: list[dict[str, Any]]) -> list[tuple[str, list[bytes]]]:
    out = []
    for entry in mix:
        model = entry["model"]
        bodies = [
            json.dumps(
                {
                    "model": model,
                    "messages": [{"role": "user", "content": f"fleet-sim conversation {c}"}],
                    "max_tokens": 16,
                }
            ).encode()
            for c in range(CONVERSATIONS)
        ]
        out.append((str(entry["class"]), bodies))
    return out


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    due: float,
    klass: str,
    tally: Tally | None,
) -> None:
    status = "exception"
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            text = await r.read()
            status = str(r.status)
            if r.status != 200 and tally is not None and not tally.first_error:
                tally.first_error = f"HTTP {r.status}: {text[:200].decode(errors='replace')}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        status = type(exc).__name__
        if tally is not None and not tally.first_error:
            tally.first_error = f"{status}: {exc}"
    if tally is None:
        return
    tally.statuses[status] += 1
    if status == "200":
        tally.latencies_ms.setdefault(klass, []).append((time.perf_counter() - due) * 1000)


async def run(args: argparse.Namespace, mix: list[dict[str, Any]]) -> dict[str, Any]:
    bodies = _bodies(mix)
    rng = random.Random(args.seed)
    picks = rng.choices(range(len(mix)), weights=[m["weight"] for m in mix], k=65_536)
    urls = [f"{u.rstrip('/')}/v1/chat/completions" for u in args.urls.split(",")]
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=args.max_in_flight, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    tasks: set[asyncio.Task[None]] = set()
    interval = 1.0 / args.rate
    measure_from, measure_to = args.warmup, args.warmup + args.duration
    total = measure_to + args.sample
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        n = 0
        phase = 0  # 0 warm-up, 1 measured, 2 sampling
        while True:
            now = time.perf_counter()
            elapsed = now - start
            if phase == 0 and elapsed >= measure_from:
                phase = 1
                print("START", flush=True)
            if phase == 1 and elapsed >= measure_to:
                phase = 2
                print("END", flush=True)
            if elapsed >= total:
                break
            while start + n * interval <= now:
                due = start + n * interval
                in_window = measure_from <= n * interval < measure_to
                if len(tasks) >= args.max_in_flight:
                    if in_window:
                        tally.shed += 1
                else:
                    klass, choices = bodies[picks[n % len(picks)]]
                    if in_window:
                        tally.sent += 1
                        tally.send_lag_ms.append((now - due) * 1000)
                    task = asyncio.create_task(
                        _one(
                            session,
                            urls[n % len(urls)],
                            choices[n % CONVERSATIONS],
                            due,
                            klass,
                            tally if in_window else None,
                        )
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                n += 1
            await asyncio.sleep(TICK_S)
        print("SAMPLE_END", flush=True)
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks), args.timeout)
    everything = [v for values in tally.latencies_ms.values() for v in values]
    ok = tally.statuses.get("200", 0)
    return {
        "rate_asked": args.rate,
        "duration_s": args.duration,
        "sent": tally.sent,
        "ok": ok,
        "achieved_rps": ok / args.duration,
        "shed_at_in_flight_cap": tally.shed,
        "statuses": dict(tally.statuses),
        "first_error": tally.first_error,
        "p50_ms": statistics.median(everything) if everything else None,
        "p99_ms": percentile(everything, 99) if everything else None,
        "by_class": {
            k: {"ok": len(v), "p50_ms": statistics.median(v), "p99_ms": percentile(v, 99)}
            for k, v in sorted(tally.latencies_ms.items())
        },
        "send_lag_p99_ms": percentile(tally.send_lag_ms, 99) if tally.send_lag_ms else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.fleet_load", description=__doc__)
    p.add_argument("--urls", required=True, help="comma-separated router base URLs")
    p.add_argument("--mix", required=True, help="JSON file: [{model, weight, class}]")
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    p.add_argument("--sample", type=float, default=3.0, help="unmeasured tail (SLOWLOG)")
    p.add_argument("--max-in-flight", type=int, default=1024)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    result = asyncio.run(run(args, json.loads(Path(args.mix).read_text())))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
