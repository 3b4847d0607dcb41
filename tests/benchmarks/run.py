"""One command for the whole benchmark: ``python -m tests.benchmarks.run [--quick]``.

Starts the fast upstream, then each target in turn (direct, nginx, bare Python proxy,
llm-router x1, llm-router x2 behind nginx, ``serve --workers 1`` against ``--workers 2``
in alternating rounds, and the peers: LiteLLM, sglang-router,
vllm-router, the Portkey gateway), drives it with wrk and a streaming
client, stops it, runs the Redis micro-benchmarks, and prints/writes the tables, a JSON
file and a PNG into ``tests/benchmarks/results/``. Every child process is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
from tests.benchmarks import loadgen, redis_probe, report
from tests.benchmarks.procs import ProcessStack, Unavailable, cpu_count
from tests.benchmarks.targets import (
    AUTH_KEY,
    CHAT_BODY,
    REPO,
    Settings,
    Target,
    start_bare_proxy,
    start_direct,
    start_litellm,
    start_nginx,
    start_portkey,
    start_redis,
    start_router,
    start_sglang_router,
    start_upstream,
    start_vllm_router,
    start_worker_pair,
)

ALL_TARGETS = [
    "direct",
    "nginx",
    "bare-python",
    "llm-router",
    "llm-router-sentinel",
    "llm-router-cluster",
    "llm-router-tls",
    "llm-router-x2",
    "llm-router-workers",
    "litellm",
    "sglang-router",
    "vllm-router",
    "portkey",
]
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {AUTH_KEY}"}
RESULTS = Path(__file__).resolve().parent / "results"
DOC = REPO / "docs" / "performance.md"


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return f"{argv[0]} ?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else f"{argv[0]} ?"


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cpus": cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis": _version(["redis-server", "--version"]).split(" sha=")[0],
        "nginx": _version(["nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": _version(["wrk", "-v"]).split(" [")[0],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="short points (about 3-5 minutes)")
    p.add_argument("--duration", type=float, help="seconds per wrk point (quick 3, full 10)")
    p.add_argument("--rounds", type=int, help="repeats per point, median kept (quick 1, full 3)")
    p.add_argument("--concurrency", default="1,16,64,256", help="comma-separated levels")
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated subset")
    p.add_argument("--no-stream", action="store_true", help="skip the streaming client")
    p.add_argument("--no-micro", action="store_true", help="skip the Redis micro-benchmarks")
    p.add_argument("--no-install", action="store_true", help="do not install the peers")
    p.add_argument("--stream-chunks", type=int, default=16)
    p.add_argument("--stream-delay-ms", type=float, default=0.0)
    p.add_argument("--load-cpus", help="CPUs for wrk and the clients (default: CPU 0)")
    p.add_argument("--server-cpus", help="CPUs for every server (default: the other CPUs)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm-router-bench",
        help="where LiteLLM's venv lives",
    )
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="copy the plot into docs/ and the tables into docs/performance.md",
    )
    return p.parse_args(argv)


class Bench:
    def __init__(self, args: argparse.Namespace, cfg: Settings, load_cpus: str | None) -> None:
        self.args = args
        self.cfg = cfg
        self.load_cpus = load_cpus
        self.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
        self.duration = args.duration or (3.0 if args.quick else 10.0)
        self.rounds = args.rounds or (1 if args.quick else 3)
        self.threads = (
            1 if load_cpus is not None and "," not in load_cpus and "-" not in load_cpus else 2
        )

    def script(self, target: Target) -> Path:
        return loadgen.wrk_script(
            self.cfg.work_dir / f"chat-{target.name.replace(' ', '_')}.lua",
            method="POST",
            body=json.dumps(CHAT_BODY).encode(),
            headers={**HEADERS, **target.headers},
        )

    def wrk(self, target: Target, concurrency: int, duration: float) -> loadgen.WrkResult:
        cpu0 = target.cpu_seconds()
        redis0 = target.redis_proc.cpu_seconds() if target.redis_proc else 0.0
        result = loadgen.run_wrk(
            f"{target.url}/v1/chat/completions",
            self.script(target),
            concurrency=concurrency,
            duration_s=duration,
            cpus=self.load_cpus,
            threads=self.threads,
        )
        if result.requests:
            result.cpu_us_per_req = (target.cpu_seconds() - cpu0) * 1e6 / result.requests
            if target.redis_proc:
                result.redis_cpu_us_per_req = (
                    (target.redis_proc.cpu_seconds() - redis0) * 1e6 / result.requests
                )
        return result

    def measure(self, target: Target) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok", "url": target.url, "notes": target.notes}
        self.wrk(target, 16, 1)  # warm-up: connections, caches, JIT-less but lazy imports
        rows = []
        for c in self.levels:
            samples = []
            for _ in range(self.rounds):
                before = redis_probe.command_calls(target.redis_port) if target.redis_port else None
                sample = self.wrk(target, c, self.duration)
                if before is not None and target.redis_port and c == 16:
                    after = redis_probe.command_calls(target.redis_port)
                    out["redis"] = {
                        **redis_probe.per_request(before, after, sample.requests),
                        "redis_cpu_us_per_req": sample.redis_cpu_us_per_req,
                    }
                samples.append(sample)
            rows.append(self.median_row(target, c, samples))
        out["wrk"] = rows
        if target.stream_unsupported:
            out["stream_status"] = target.stream_unsupported
        elif not self.args.no_stream:
            out["stream"] = self.stream(target)
        if target.redis_port:
            self.router_extras(target, out)
        return out

    def median_row(
        self, target: Target, c: int, samples: list[loadgen.WrkResult]
    ) -> dict[str, Any]:
        """The median round by throughput, printed, with a sample of its errors if any."""
        row = sorted(samples, key=lambda s: s.rps)[len(samples) // 2]
        out = row.as_dict()
        if row.errors:
            out["error_sample"] = loadgen.status_sample(
                f"{target.url}/v1/chat/completions",
                json.dumps(CHAT_BODY).encode(),
                {**HEADERS, **target.headers},
                concurrency=c,
                total=max(c * 4, 200),
            )
        print(
            f"  {target.name:<24} c{c:<4} {row.rps:>9,.0f} req/s  p50 {row.p50_ms:7.2f} ms"
            f"  p99 {row.p99_ms:8.2f} ms  cpu {row.cpu_us_per_req or 0:6.0f} µs/req"
            f"{f'  errors {row.errors}' if row.errors else ''}",
            flush=True,
        )
        return out

    def compare_workers(self, pair: tuple[Target, Target]) -> dict[str, dict[str, Any]]:
        """``--workers 1`` and ``--workers 2`` in alternating rounds (w1 w2, then w2 w1, ...),
        so that a busy neighbour on the machine weighs on both alike; medians per level."""
        for target in pair:
            self.wrk(target, 16, 1)  # warm-up
        rounds = max(self.rounds, 2)
        samples: dict[str, dict[int, list[loadgen.WrkResult]]] = {t.name: {} for t in pair}
        for c in self.levels:
            for r in range(rounds):
                for target in pair if r % 2 == 0 else pair[::-1]:
                    samples[target.name].setdefault(c, []).append(
                        self.wrk(target, c, self.duration)
                    )
        out: dict[str, dict[str, Any]] = {}
        for target in pair:
            rows = [self.median_row(target, c, samples[target.name][c]) for c in self.levels]
            out[target.name] = {
                "status": "ok",
                "url": target.url,
                "notes": [*target.notes, f"{rounds} alternated rounds per level"],
                "wrk": rows,
            }
        return out

    def stream(self, target: Target) -> list[dict[str, Any]]:
        body = json.dumps({**CHAT_BODY, "stream": True}).encode()
        rows = []
        for c in (1, 16):
            res = loadgen.run_stream(
                f"{target.url}/v1/chat/completions",
                body,
                {**HEADERS, **target.headers},
                concurrency=c,
                duration_s=max(1.0, self.duration * 0.7),
            )
            rows.append(res.as_dict())
            print(
                f"  {target.name:<24} stream c{c:<3} ttfb p50 {res.ttfb_p50_ms:6.2f} ms "
                f"total p50 {res.total_p50_ms:6.2f} ms ({res.requests} req, "
                f"{res.errors} err)",
                flush=True,
            )
        return rows

    def router_extras(self, target: Target, out: dict[str, Any]) -> None:
        assert target.redis_port is not None
        try:
            out.setdefault("redis", {})["client_commands_per_request"] = (
                redis_probe.client_commands_per_request(
                    target.redis_port,
                    f"{target.url}/v1/chat/completions",
                    CHAT_BODY,
                    HEADERS,
                    200,
                )
            )
        except Exception as exc:  # a probe failure must not lose the throughput figures
            out["notes"].append(f"MONITOR probe failed: {exc}")
        try:
            out["heartbeats_per_s"] = self.heartbeat_ingest(target)
        except Exception as exc:
            out["notes"].append(f"heartbeat ingest failed: {exc}")

    def heartbeat_ingest(self, target: Target) -> float:
        """Heartbeats/s the router(s) accept over HTTP, one node beating as fast as wrk can."""
        models = [f"org/hb-model-{j}-Q4_K_M.gguf" for j in range(20)]
        with httpx.Client(timeout=10) as client:
            reg = client.post(
                f"{target.url}/v0/nodes",
                json={
                    "machine_name": "bench-heartbeat",
                    "ip_address": "127.0.0.1",
                    "runtime_port": 9,
                    "node_api_port": 10,
                    "executable_models": models,
                    "gpu_backend": "cpu",
                    "max_concurrency": 1,
                },
            )
            reg.raise_for_status()
            data = reg.json()
        script = loadgen.wrk_script(
            self.cfg.work_dir / "heartbeat.lua",
            method="POST",
            body=json.dumps(
                {
                    "node_id": data["node_id"],
                    "executable_models": models,
                    "cpu_usage": 10.0,
                    "active_requests": 0,
                }
            ).encode(),
            headers={"Content-Type": "application/json", "X-Node-Token": data["node_token"]},
        )
        res = loadgen.run_wrk(
            f"{target.url}/v0/health",
            script,
            concurrency=16,
            duration_s=min(self.duration, 5),
            cpus=self.load_cpus,
            threads=self.threads,
        )
        print(
            f"  {target.name:<24} heartbeats {res.rps:,.0f}/s (p50 {res.p50_ms:.2f} ms, "
            f"{res.errors} errors)",
            flush=True,
        )
        return res.rps


def _factories(
    cfg: Settings, upstream: Any, port: int
) -> dict[str, Callable[[], AbstractContextManager[Target]]]:
    return {
        "direct": lambda: start_direct(upstream, port),
        "nginx": lambda: start_nginx(cfg, port),
        "bare-python": lambda: start_bare_proxy(cfg, port),
        "llm-router": lambda: start_router(cfg, port, 1),
        "llm-router-sentinel": lambda: start_router(cfg, port, 1, "sentinel"),
        "llm-router-cluster": lambda: start_router(cfg, port, 1, "cluster"),
        "llm-router-tls": lambda: start_router(cfg, port, 1, "tls"),
        "llm-router-x2": lambda: start_router(cfg, port, 2),
        "litellm": lambda: start_litellm(cfg, port),
        "sglang-router": lambda: start_sglang_router(cfg, port),
        "vllm-router": lambda: start_vllm_router(cfg, port),
        "portkey": lambda: start_portkey(cfg, port),
    }


def _micro(bench: Bench, stack: ProcessStack) -> dict[str, Any]:
    from tests.benchmarks.micro import run_micro  # imports the project's state layer

    _, port = start_redis(stack, bench.cfg)
    quick = bench.args.quick
    return asyncio.run(
        run_micro(
            port,
            sizes=[10, 100, 1000, 10_000],
            calls=500 if quick else 5000,
            budget_s=1.5 if quick else 5.0,
            memory_nodes=300 if quick else 1000,
        )
    )


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    def handler(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not loadgen.have_wrk():
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    machine = machine_info()  # before this process pins itself
    load_cpus = args.load_cpus or (str(cpus[0]) if len(cpus) > 1 else None)
    server_cpus = args.server_cpus or (",".join(map(str, cpus[1:])) if len(cpus) > 1 else None)
    if load_cpus is not None:
        # The streaming client runs in this process: keep it off the servers' CPUs too.
        os.sched_setaffinity(0, {int(c) for c in load_cpus.split(",")})
    work = Path(tempfile.mkdtemp(prefix="llm-router-bench-"))
    cfg = Settings(
        work_dir=work,
        server_cpus=server_cpus,
        all_cpus=",".join(map(str, cpus)) if len(cpus) > 1 else None,
        cache_dir=args.cache_dir,
        install_peers=not args.no_install,
        stream_chunks=args.stream_chunks,
        stream_delay_ms=args.stream_delay_ms,
    )
    bench = Bench(args, cfg, load_cpus)
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine,
        "config": {
            "mode": "quick" if args.quick else "full",
            "duration_s": bench.duration,
            "rounds": bench.rounds,
            "concurrency": bench.levels,
            "load_cpus": load_cpus,
            "server_cpus": server_cpus,
            "wrk_threads": bench.threads,
            "stream_chunks": args.stream_chunks,
            "stream_delay_ms": args.stream_delay_ms,
        },
        "targets": {},
    }
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    began = time.monotonic()
    try:
        with _terminate_on_sigterm(), ProcessStack(work / "logs") as stack:
            upstream, port = start_upstream(stack, cfg)
            factories = _factories(cfg, upstream, port)
            for name in wanted:
                if name not in factories and name != "llm-router-workers":
                    results["targets"][name] = {"status": f"unknown target {name!r}"}
                    continue
                print(f"[{time.monotonic() - began:6.1f}s] {name}", flush=True)
                try:
                    if name == "llm-router-workers":
                        with start_worker_pair(cfg, port) as pair:
                            results["targets"].update(bench.compare_workers(pair))
                        continue
                    with factories[name]() as target:
                        results["targets"][name] = bench.measure(target)
                except Unavailable as exc:
                    results["targets"][name] = {"status": f"unavailable: {exc}"}
                    print(f"  {name}: unavailable: {exc}", flush=True)
                except (RuntimeError, OSError, subprocess.SubprocessError, httpx.HTTPError) as exc:
                    results["targets"][name] = {"status": f"failed: {exc}"}
                    print(f"  {name}: failed: {exc}", flush=True)
            if not args.no_micro:
                print(f"[{time.monotonic() - began:6.1f}s] Redis micro-benchmarks", flush=True)
                try:
                    results["micro"] = _micro(bench, stack)
                except (ImportError, RuntimeError, OSError, Unavailable) as exc:
                    results["micro"] = {"status": f"unavailable: {exc}"}
                    print(f"  micro-benchmarks unavailable: {exc}", flush=True)
    finally:
        results["elapsed_s"] = round(time.monotonic() - began, 1)
        shutil.rmtree(work, ignore_errors=True)
    json_path, md_path, png = report.write(results, RESULTS)
    print()
    print(report.markdown(results))
    print(f"results: {json_path}\ntables:  {md_path}\nplot:    {png or 'none'}")
    print(f"elapsed: {results['elapsed_s']} s")
    if args.update_docs:
        if png is not None:
            shutil.copyfile(png, REPO / "docs" / "performance.png")
        if not report.update_docs(DOC, report.markdown(results)):
            print(f"{DOC} has no bench markers; tables not copied", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
