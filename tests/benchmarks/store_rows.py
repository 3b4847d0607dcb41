"""The router on every store kind in one run: ``python -m tests.benchmarks.store_rows``.

One upstream and one router per store kind (plain ``redis://``, Sentinel, a 3-master
Cluster, TLS; see ``stores.py``) are all started first and stay up; each round then drives
every router with wrk at each concurrency in turn, the order reversed every other round.
A row and its plain neighbour are thus measured seconds apart, on the same machine mood,
which is what makes a few-percent comparison possible on a shared machine: the figure
that matters is the median over rounds of each round's ratio to plain.

Printed per kind: medians of req/s, p50/p99 and router CPU per request, the ratio to
plain; then, from short probes outside the timed rounds, Redis round trips per request
(MONITOR on the server holding the fleet), every command per request (commandstats, also
those inside scripts) and, on Sentinel, the commands the sentinel received per second
while loaded and while idle (it must not grow with the load).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from tests.benchmarks import loadgen, redis_probe
from tests.benchmarks.procs import Proc, ProcessStack
from tests.benchmarks.stores import STORES, StoreHandle
from tests.benchmarks.targets import (
    AUTH_KEY,
    CHAT_BODY,
    Heartbeater,
    Settings,
    _start_router,
    start_upstream,
)

KINDS = ("plain", "sentinel", "cluster", "tls")
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {AUTH_KEY}"}


@dataclass
class Row:
    kind: str
    url: str
    router: Proc
    store: StoreHandle


def _split_cpus() -> tuple[str | None, str | None]:
    """wrk on the first CPU, every server on the others (as ``run.py`` does)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return str(cpus[0]), ",".join(map(str, cpus[1:]))


@contextlib.contextmanager
def started(cfg: Settings, kinds: list[str]) -> Iterator[list[Row]]:
    with ProcessStack(cfg.work_dir / "logs") as stack:
        _, upstream_port = start_upstream(stack, cfg)
        rows, beats = [], []
        try:
            for kind in kinds:
                (cfg.work_dir / kind).mkdir()
                store = STORES[kind](stack, cfg.work_dir / kind, cfg.server_cpus)
                router, port = _start_router(stack, cfg, f"router-{kind}", store.url)
                url = f"http://127.0.0.1:{port}"
                beats.append(Heartbeater(url, upstream_port))
                beats[-1].start()
                rows.append(Row(kind, url, router, store))
            yield rows
        finally:
            for beat in beats:
                beat.stop()


def _sentinel_commands(port: int) -> int:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


class Driver:
    def __init__(self, cfg: Settings, load_cpus: str | None, duration_s: float) -> None:
        self.load_cpus = load_cpus
        self.duration_s = duration_s
        self.script = loadgen.wrk_script(
            cfg.work_dir / "chat.lua",
            method="POST",
            body=json.dumps(CHAT_BODY).encode(),
            headers=HEADERS,
        )

    def wrk(self, row: Row, concurrency: int, duration_s: float) -> loadgen.WrkResult:
        cpu0 = row.router.cpu_seconds()
        result = loadgen.run_wrk(
            f"{row.url}/v1/chat/completions",
            self.script,
            concurrency=concurrency,
            duration_s=duration_s,
            cpus=self.load_cpus,
            threads=1,
        )
        if result.requests:
            result.cpu_us_per_req = (row.router.cpu_seconds() - cpu0) * 1e6 / result.requests
        return result

    def probe(self, row: Row) -> dict[str, Any]:
        """What one request asks of Redis (and of the sentinel), outside the timed rounds."""
        port = row.store.probe_port
        before = redis_probe.command_calls(port)
        sample = self.wrk(row, 16, self.duration_s)
        out: dict[str, Any] = redis_probe.per_request(
            before, redis_probe.command_calls(port), sample.requests
        )
        out["round_trips"] = redis_probe.client_commands_per_request(
            port, f"{row.url}/v1/chat/completions", CHAT_BODY, HEADERS, 200
        )
        if row.store.sentinel_port is not None:
            out["sentinel_per_s"] = self._sentinel_rates(row)
        return out

    def _sentinel_rates(self, row: Row) -> tuple[float, float]:
        """Commands/s the sentinel received, loaded (wrk c16) and idle, the same length."""
        assert row.store.sentinel_port is not None
        rates = []
        for load in (True, False):
            before, began = _sentinel_commands(row.store.sentinel_port), time.monotonic()
            if load:
                self.wrk(row, 16, self.duration_s)
            else:
                time.sleep(self.duration_s)
            spent = time.monotonic() - began
            # Less the INFO that read the counter.
            count = _sentinel_commands(row.store.sentinel_port) - before - 1
            rates.append(count / spent)
        return rates[0], rates[1]


def _median(samples: list[loadgen.WrkResult], attr: str) -> float:
    return statistics.median(float(getattr(s, attr) or 0.0) for s in samples)


def _ratio(kind: list[loadgen.WrkResult], plain: list[loadgen.WrkResult], attr: str) -> str:
    """The median of the per-round ratios, and their middle half (the machine's noise)."""
    ratios = sorted(
        float(getattr(s, attr) or 0.0) / float(getattr(p, attr) or 1.0)
        for s, p in zip(kind, plain, strict=True)
    )
    if len(ratios) < 4:
        return f"{statistics.median(ratios):.2f}x"
    low, mid, high = statistics.quantiles(ratios, n=4)
    return f"{mid:.2f}x [{low:.2f}-{high:.2f}]"


def report(
    kinds: list[str], levels: list[int], runs: dict[tuple[str, int], list[loadgen.WrkResult]]
) -> list[str]:
    at = 16 if 16 in levels else levels[0]
    lines = [
        "| store | " + " | ".join(f"req/s c{c}" for c in levels)
        + f" | c{at} p50 / p99 ms | router CPU µs/req c{at} |",
        "|---|" + "---|" * len(levels) + "---|---|",
    ]  # fmt: skip
    for kind in kinds:
        cells = []
        for c in levels:
            ratio = _ratio(runs[(kind, c)], runs[("plain", c)], "rps")
            cells.append(f"{_median(runs[(kind, c)], 'rps'):,.0f} ({ratio})")
        mine, plain = runs[(kind, at)], runs[("plain", at)]
        lines.append(
            f"| {kind} | " + " | ".join(cells)
            + f" | {_median(mine, 'p50_ms'):.2f} / {_median(mine, 'p99_ms'):.1f}"
            f" | {_median(mine, 'cpu_us_per_req'):,.0f} ({_ratio(mine, plain, 'cpu_us_per_req')}) |"
        )  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.store_rows")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk point")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--kinds", default=",".join(KINDS))
    opts = parser.parse_args(argv)
    levels = [int(c) for c in opts.concurrency.split(",")]
    kinds = [k for k in opts.kinds.split(",") if k]
    if kinds[0] != "plain":
        parser.error("the first kind must be plain: every ratio is to it")
    load_cpus, server_cpus = _split_cpus()
    work = Path(tempfile.mkdtemp(prefix="llmr-bench-stores-"))
    cfg = Settings(work_dir=work, server_cpus=server_cpus, cache_dir=work, install_peers=False)
    driver = Driver(cfg, load_cpus, opts.duration)
    runs: dict[tuple[str, int], list[loadgen.WrkResult]] = {
        (k, c): [] for k in kinds for c in levels
    }
    errors: dict[str, int] = dict.fromkeys(kinds, 0)
    try:
        with started(cfg, kinds) as rows:
            for row in rows:
                driver.wrk(row, 16, 1.0)  # warm-up: connections, caches, lazy imports
            for round_no in range(opts.rounds):
                order = rows if round_no % 2 == 0 else rows[::-1]
                for c in levels:
                    for row in order:
                        sample = driver.wrk(row, c, opts.duration)
                        errors[row.kind] += sample.errors
                        runs[(row.kind, c)].append(sample)
                print(f"round {round_no + 1}/{opts.rounds} done", flush=True)
            probes = {row.kind: driver.probe(row) for row in rows}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{opts.rounds} rounds, {opts.duration:g} s per point, alternating order; "
        f"medians; (x) = median of the per-round ratios to plain [their middle half]; "
        f"wrk on CPU {load_cpus}, "
        f"servers on CPU {server_cpus}\n"
    )
    print("\n".join(report(kinds, levels, runs)))
    print("\n| store | Redis round trips/req | commands/req (all) | errors | top commands |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        probe = probes[kind]
        top = ", ".join(f"{name} {n:.2f}" for name, n in probe["top_commands"][:4])
        trips = "?" if probe["round_trips"] is None else f"{probe['round_trips']:.2f}"
        print(
            f"| {kind} | {trips} | {probe['commands_per_request']:.2f} | {errors[kind]} | {top} |"
        )
    for kind, probe in probes.items():
        if "sentinel_per_s" in probe:
            loaded, idle = probe["sentinel_per_s"]
            print(f"\n{kind}: the sentinel received {loaded:.2f} commands/s under wrk c16, "
                  f"{idle:.2f}/s idle")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
