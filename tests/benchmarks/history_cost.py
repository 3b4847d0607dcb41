"""What the dashboard history adds to a request's observability on the request path.

Runs the proxy's observer hooks for one streamed request (begin, leased, sending,
answered, finish) with and without the history recorder, interleaved so both see the same
machine load, and prints medians (CPU time of this process) and their ratio. No Redis: the
recorder only counts in memory on the request path; its flush is a background task. Run:
``python -m tests.benchmarks.history_cost``.
"""

from __future__ import annotations

import statistics
import time

from llm_router.observability.history import HistoryRecorder
from llm_router.observability.metrics import Counter
from llm_router.observability.observer import Observer
from llm_router.observability.router_metrics import RouterMetrics
from llm_router.state.keys import Keys

REQUESTS = 20_000
ROUNDS = 21


def per_request_us(observer: Observer) -> float:
    started = time.process_time()
    for i in range(REQUESTS):
        trace = observer.begin("bench-model", "r")
        observer.leased(trace, "node-1", None)
        trace.sending()
        trace.answered(stream=True)
        observer.finish(trace, 200 if i % 50 else 503)
    return (time.process_time() - started) / REQUESTS * 1e6


def main() -> None:
    recorder = HistoryRecorder(None, Keys(), None, Counter("dropped", "unused"))  # type: ignore[arg-type]
    plain = Observer(RouterMetrics())
    with_history = Observer(RouterMetrics(), history=recorder)
    base, hist = [], []
    for _ in range(ROUNDS):
        base.append(per_request_us(plain))
        hist.append(per_request_us(with_history))
    b, h = statistics.median(base), statistics.median(hist)
    print(f"observer hooks per request, median of {ROUNDS} rounds of {REQUESTS}:")
    print(f"  without history  {b:6.2f} µs")
    print(f"  with history     {h:6.2f} µs   (+{h - b:.2f} µs, ratio {h / b:.2f})")


if __name__ == "__main__":
    main()
