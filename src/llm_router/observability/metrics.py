"""A small Prometheus registry: counters, gauges and histograms with bounded labels.

Hand-written rather than ``prometheus_client`` so that each replica owns its registry (no
module-level default) and every update on the request path is cheap: a dict lookup and an
add, or, for a caller that resolved its labels once (``child``), an attribute add.
Label values that would grow without bound (models, nodes) go through a ``LabelCap``:
the first ``limit`` distinct values are kept, every later one is reported as ``other``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import TypeVar

OTHER = "other"

#: Seconds; fine at the low end, where router overhead lives, and up to long generations.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
#: Redis round trips: sub-millisecond when healthy.
REDIS_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
    1.0,
)


class LabelCap:
    """Keeps at most ``limit`` distinct values of one label; the rest become ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return OTHER


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class _Samples(_Metric):
    """A metric that is one value per label tuple (counters and gauges)."""

    def samples(self) -> Iterable[tuple[tuple[str, ...], float]]:
        raise NotImplementedError

    def render(self) -> list[str]:
        lines = self._header()
        for labels, value in sorted(self.samples()):
            lines.append(f"{self.name}{_labels(self.label_names, labels)} {_number(value)}")
        return lines


class CounterChild:
    """One label set of a counter, for a caller that adds to it often."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Counter(_Samples):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._children: dict[tuple[str, ...], CounterChild] = {}

    def child(self, *labels: str) -> CounterChild:
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = CounterChild()
        return found

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = CounterChild()
        found.value += amount

    def value(self, *labels: str) -> float:
        found = self._children.get(labels)
        return found.value if found is not None else 0.0

    def samples(self) -> Iterable[tuple[tuple[str, ...], float]]:
        return ((labels, c.value) for labels, c in self._children.items())


class Gauge(_Samples):
    """A gauge whose samples are replaced wholesale (scrape-time views) or set one by one."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def set(self, value: float, *labels: str) -> None:
        self._values[labels] = value

    def replace(self, samples: Iterable[tuple[tuple[str, ...], float]]) -> None:
        self._values = dict(samples)

    def value(self, *labels: str) -> float | None:
        return self._values.get(labels)

    def samples(self) -> Iterable[tuple[tuple[str, ...], float]]:
        return self._values.items()


class HistogramChild:
    """One label set of a histogram: per-bucket (non-cumulative) counts with the +Inf slot
    last, and the sum. An observation is a bisection (C code) and two adds."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._bounds = list(self.buckets)
        self._children: dict[tuple[str, ...], HistogramChild] = {}

    def child(self, *labels: str) -> HistogramChild:
        """The label set's buckets, for a caller that resolves them once and observes often."""
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = HistogramChild(self._bounds)
        return found

    def observe(self, value: float, *labels: str) -> None:
        self.child(*labels).observe(value)

    def count(self, *labels: str) -> int:
        found = self._children.get(labels)
        return sum(found.counts) if found is not None else 0

    def render(self) -> list[str]:
        lines = self._header()
        for labels in sorted(self._children):
            child = self._children[labels]
            running = 0
            for bound, n in zip((*self.buckets, math.inf), child.counts, strict=True):
                running += n
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {running}")
            plain = _labels(self.label_names, labels)
            lines.append(f"{self.name}_sum{plain} {_number(child.sum)}")
            lines.append(f"{self.name}_count{plain} {running}")
        return lines


_M = TypeVar("_M", bound=_Metric)


class Registry:
    """The metrics of one replica, rendered in the Prometheus text format (0.0.4)."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help_text, labels))

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help_text, labels))

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return self._add(Histogram(name, help_text, labels, buckets))

    def _add(self, metric: _M) -> _M:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics.append(metric)
        return metric

    def families(self) -> list[tuple[str, list[str]]]:
        """Each metric's name and lines: its HELP and TYPE lines, then its samples."""
        return [(metric.name, metric.render()) for metric in self._metrics]

    def render(self) -> str:
        lines = [line for _, family in self.families() for line in family]
        return "\n".join(lines) + "\n"
