"""CPU per request of the proxy's observer hooks: tracing off (the default) against the
observer of a given git revision, and tracing on (spans to an exporter that drops them).

    python -m tests.benchmarks.observer_cost [--before REV] [--requests N] [--rounds R]

Both observers run in this process, in alternating rounds, on the same metrics code; the
older one is loaded from ``git show REV:src/llm_router/observability/observer.py``. Prints
the median µs per request of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

from tests.benchmarks.targets import REPO

from llm_router.observability import observer as current
from llm_router.observability.router_metrics import RouterMetrics

HEADERS = {"content-type": "application/json", "x-request-id": "r1", "user-agent": "bench"}


def _module_at(rev: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:src/llm_router/observability/observer.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("observer_before")
    module.__dict__["__name__"] = "observer_before"
    sys.modules["observer_before"] = module
    exec(compile(source, "observer_before.py", "exec"), module.__dict__)
    return module


def _one_request(obs: Any, *, with_headers: bool) -> None:
    out: dict[str, str] = {}
    trace = obs.begin("m1", "r1", HEADERS) if with_headers else obs.begin("m1", "r1")
    obs.leased(trace, "node-a", None)
    if with_headers:
        obs.propagate(trace, out)
    trace.sending()
    trace.answered()
    obs.finish(trace, 200)


def _per_request_us(run: Callable[[], None], requests: int) -> float:
    start = time.process_time()
    for _ in range(requests):
        run()
    return (time.process_time() - start) * 1e6 / requests


def _tracing_observer() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from llm_router.observability.request_spans import TracingObserver

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return TracingObserver(RouterMetrics(), tracer=provider.get_tracer("bench"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="main", help="git revision of the observer to compare")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args(argv)

    before = _module_at(args.before)
    old_obs = before.Observer(RouterMetrics())
    new_obs = current.Observer(RouterMetrics())
    old_has_headers = "headers" in before.Observer.begin.__code__.co_varnames
    runs: dict[str, Callable[[], None]] = {
        f"observer at {args.before}": lambda: _one_request(old_obs, with_headers=old_has_headers),
        "observer now, tracing off": lambda: _one_request(new_obs, with_headers=True),
    }
    try:
        traced = _tracing_observer()
        runs["observer now, tracing on"] = lambda: _one_request(traced, with_headers=True)
    except ImportError:
        print("opentelemetry-sdk is not installed: tracing-on not measured")
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up
        _per_request_us(run, 1000)
    for _ in range(args.rounds):
        for name, run in runs.items():
            samples[name].append(_per_request_us(run, args.requests))
    base = statistics.median(samples[f"observer at {args.before}"])
    print(f"{'hooks of one request':<34} {'median µs':>10} {'vs before':>10}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<34} {median:>10.2f} {median / base:>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
