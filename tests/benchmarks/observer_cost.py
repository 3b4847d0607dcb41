"""CPU per request of the proxy's observer hooks and what they feed (metrics, the decision
log, its flushes): the code of a given git revision against the code now, and tracing on
(spans to an exporter that drops them).

    python -m tests.benchmarks.observer_cost [--before REV] [--requests N] [--rounds R]

Each measurement runs in a fresh process, revisions alternating round by round; the older
revision's ``src/`` is unpacked with ``git archive`` and put first on that process's path,
so its observer runs on its own metrics and decision-log code. Prints the median µs per
request of each and the ratio to the older revision.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.benchmarks.targets import REPO

HEADERS = {"content-type": "application/json", "x-request-id": "r1", "user-agent": "bench"}
#: A flush every this many requests: the decision log's 0.5 s period at ~1,000 requests/s.
FLUSH_EVERY = 500
MODELS = ("m1", "m2", "m3")
NODES = ("node-a", "node-b")


class _Pipe:
    def lpush(self, *_: Any) -> None: ...

    def ltrim(self, *_: Any) -> None: ...

    async def execute(self) -> None: ...


class _NoRedis:
    """Takes the decision log's writes and drops them: the flush's own CPU is measured."""

    def pipeline(self, transaction: bool = False) -> _Pipe:
        return _Pipe()


def _one_request(obs: Any, i: int, *, with_headers: bool) -> None:
    model, node = MODELS[i % 3], NODES[i % 2]
    out: dict[str, str] = {}
    trace = obs.begin(model, "r1", HEADERS) if with_headers else obs.begin(model, "r1")
    obs.leased(trace, node, None)
    if with_headers:
        obs.propagate(trace, out)
    trace.sending()
    trace.answered()
    obs.finish(trace, 200)


def _observer(tracing: bool) -> Any:
    from llm_router.observability.decisions import DecisionLog
    from llm_router.observability.observer import Observer
    from llm_router.observability.router_metrics import RouterMetrics

    metrics = RouterMetrics()
    decisions = DecisionLog(_NoRedis(), "{llmr}:decisions", metrics.decisions_dropped)
    if not tracing:
        return Observer(metrics, decisions, replica="bench")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from llm_router.observability.request_spans import TracingObserver

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return TracingObserver(metrics, decisions, replica="bench", tracer=provider.get_tracer("bench"))


def _measure(requests: int, tracing: bool) -> float:
    """µs of process CPU per request, flushes included."""
    obs = _observer(tracing)
    with_headers = "headers" in type(obs).begin.__code__.co_varnames
    loop = asyncio.new_event_loop()
    run: Callable[[int], None] = lambda i: _one_request(obs, i, with_headers=with_headers)  # noqa: E731
    for i in range(1000):  # warm-up: every series exists
        run(i)
    start = time.process_time()
    for i in range(requests):
        run(i)
        if i % FLUSH_EVERY == FLUSH_EVERY - 1:
            loop.run_until_complete(obs.decisions.flush())
    elapsed = time.process_time() - start
    loop.close()
    return elapsed * 1e6 / requests


def unpack_src(rev: str, into: Path) -> Path:
    """The revision's ``src/`` unpacked under ``into``; returns its path."""
    archive = subprocess.run(
        ["git", "archive", rev, "src"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _in_process(src: Path | None, requests: int, tracing: bool) -> float:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), str(REPO)])
    argv = [sys.executable, "-m", "tests.benchmarks.observer_cost", "--measure"]
    argv += ["--requests", str(requests)] + (["--tracing"] if tracing else [])
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="main", help="git revision of the code to compare")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tracing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(f"{_measure(args.requests, args.tracing):.4f}")
        return 0

    with tempfile.TemporaryDirectory(prefix="observer-before-") as tmp:
        before_src = unpack_src(args.before, Path(tmp))
        runs: dict[str, tuple[Path | None, bool]] = {
            f"observer at {args.before}": (before_src, False),
            "observer now, tracing off": (None, False),
        }
        try:
            import opentelemetry.sdk  # noqa: F401

            runs["observer now, tracing on"] = (None, True)
        except ImportError:
            print("opentelemetry-sdk is not installed: tracing-on not measured")
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (src, tracing) in runs.items():
                samples[name].append(_in_process(src, args.requests, tracing))
    base = statistics.median(samples[f"observer at {args.before}"])
    print(f"{'hooks of one request':<34} {'median µs':>10} {'vs before':>10}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<34} {median:>10.2f} {median / base:>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
