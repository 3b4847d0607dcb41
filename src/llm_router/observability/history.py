"""The fleet's recent past for the dashboard: traffic, errors, latency and TTFT, queue
depth per model and load per node, in 10-second buckets over the last 15 minutes.

Kept in Redis, so every replica draws the same charts. Each bucket is two keys (see
``docs/redis-keys.md``): a hash of counts every replica adds to (``HINCRBY``), and a sorted
set of peak gauges every replica raises (``ZADD GT``). Both expire on their own once they
leave the window, so nothing needs cleaning up and the layout is bounded.

The request path only updates a few in-memory counters (``HistoryRecorder.record``). Every
``FLUSH_S`` a background task adds them to the current bucket with one pipelined round trip.
The peaks come from the fleet view, which reads every node record: one replica at a time
samples them (whoever takes ``history:sampler``), and the period grows with the fleet
(``sample_period_ms``), so this background read costs Redis the same however many replicas
run and stays bounded as the fleet grows wide. A sampler killed mid-way leaves the key to
expire; the next period another replica takes it. The bucket is chosen by the Redis clock,
so replicas whose clocks disagree still fill the same buckets. A replica killed mid-way
loses at most its last ``FLUSH_S`` of counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llm_router.observability.fleet_view import STATE_DOWN, FleetSnapshot, FleetView
from llm_router.observability.metrics import Counter
from llm_router.observability.periodic import PeriodicFlush
from llm_router.observability.quantiles import TOP_INDEX, bucket_of, quantile_ms
from llm_router.observability.shared_read import SharedRead
from llm_router.state.keys import Keys
from llm_router.state.scripts import STORE_DOWN_ERRORS

log = logging.getLogger(__name__)

BUCKET_S = 10
WINDOW_S = 15 * 60
BUCKETS = WINDOW_S // BUCKET_S
FLUSH_S = 2.0
#: A bucket outlives the window by this much, so a reader at the window's edge finds it.
_EXPIRY_SLACK_S = 60
#: Fleet-wide, one fleet-view read per this many ms per node (at least every FLUSH_S):
#: 2 ms a node reads a 10,000-node fleet every 20 s, about 500 node records a second.
SAMPLE_MS_PER_NODE = 2
#: Peak gauges kept per bucket: the longest queues and the busiest nodes.
MAX_QUEUES = 64
MAX_NODES = 128

# Hash fields and zset members. The variable part comes last, so any model id is safe.
_REQUESTS = "r:"
_ERRORS = "e:"
_LATENCY = "l:"
_TTFT = "t:"
_QUEUE = "q:"
_LOAD = "n:"
# Field names built once: the request path only looks them up.
_LATENCY_FIELDS = [f"{_LATENCY}{i}" for i in range(TOP_INDEX + 1)]
_TTFT_FIELDS = [f"{_TTFT}{i}" for i in range(TOP_INDEX + 1)]


def is_error(status: int, broken: bool) -> bool:
    """An answer the fleet failed to give: a 5xx, a 429 (busy, queue full), a broken stream.
    Other 4xx are the client's mistakes and are not counted against the fleet."""
    return broken or status >= 500 or status == 429


def bucket_start(now_s: float) -> int:
    return int(now_s // BUCKET_S) * BUCKET_S


def sample_period_ms(nodes: int) -> int:
    """How long one fleet-wide peak sample holds before any replica takes the next."""
    return max(int(FLUSH_S * 1000), nodes * SAMPLE_MS_PER_NODE)


class HistoryRecorder(PeriodicFlush):
    """One replica's contribution: counts from the request path, peaks from the fleet view."""

    def __init__(self, redis: Any, keys: Keys, view: FleetView, dropped: Counter) -> None:
        super().__init__("history", FLUSH_S)
        self._redis = redis
        self._keys = keys
        self._view = view
        self._dropped = dropped
        # Counts since the last flush, as hash field → increment.
        self._pending: dict[str, int] = {}
        self._model_fields: dict[str, tuple[str, str]] = {}
        #: Nodes in the last fleet view this replica sampled: sizes the sampling period.
        self._fleet_nodes = 0

    def record(
        self, model: str, status: int, broken: bool, total_s: float, ttft_s: float | None
    ) -> None:
        """Called once per finished request; ``model`` is already a bounded label."""
        counts = self._pending
        fields = self._model_fields.get(model)
        if fields is None:
            fields = self._model_fields[model] = (_REQUESTS + model, _ERRORS + model)
        # Counted in place, field by field: this runs for every request, and a list of the
        # names to count would be one more object per request.
        get = counts.get
        name = fields[0]
        counts[name] = get(name, 0) + 1
        name = _LATENCY_FIELDS[bucket_of(total_s)]
        counts[name] = get(name, 0) + 1
        if is_error(status, broken):
            name = fields[1]
            counts[name] = get(name, 0) + 1
        if ttft_s is not None:
            name = _TTFT_FIELDS[bucket_of(ttft_s)]
            counts[name] = get(name, 0) + 1

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        try:
            now_s, sampling = await self._take_sample_turn()
        except STATE_DOWN as exc:
            # Not kept for later: a store that cannot answer this cannot take the counts.
            self._drop(pending, exc)
            return
        peaks: dict[str, float] = {}
        if sampling:
            try:
                snap = await self._view.snapshot()
            except STATE_DOWN as exc:
                log.debug("history peaks not sampled: %s", exc)
            else:
                peaks, now_s = _peaks(snap), snap.taken_at
                self._fleet_nodes = len(snap.nodes)
        if not pending and not peaks:
            return
        start = bucket_start(now_s)
        expire_at = start + BUCKET_S + WINDOW_S + _EXPIRY_SLACK_S
        counts_key, peaks_key = self._keys.history(start), self._keys.history_peaks(start)
        pipe = self._redis.pipeline(transaction=False)
        for name, amount in pending.items():
            pipe.hincrby(counts_key, name, amount)
        if pending:
            pipe.expireat(counts_key, expire_at)
        if peaks:
            pipe.zadd(peaks_key, peaks, gt=True)
            pipe.expireat(peaks_key, expire_at)
        try:
            await pipe.execute()
        except STORE_DOWN_ERRORS as exc:
            # Not retried: a partly applied pipeline would be counted twice.
            self._drop(pending, exc)

    def _drop(self, pending: Mapping[str, int], exc: BaseException) -> None:
        self._dropped.inc(amount=sum(n for k, n in pending.items() if k.startswith(_REQUESTS)))
        log.debug("history not written: %s", exc)

    async def _take_sample_turn(self) -> tuple[float, bool]:
        """The Redis clock (s), and whether this replica samples the peaks this period."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.set(self._keys.history_sampler, "1", nx=True, px=sample_period_ms(self._fleet_nodes))
        (seconds, micros), taken = await pipe.execute()
        return int(seconds) + int(micros) / 1e6, bool(taken)


def _busiest(values: Mapping[str, float], limit: int) -> dict[str, float]:
    ordered = sorted((k for k, v in values.items() if v > 0), key=lambda k: (-values[k], k))
    return {k: values[k] for k in ordered[:limit]}


def _load_pct(node: Mapping[str, Any]) -> float:
    capacity = max(1, int(node["max_concurrency"] or 1))
    return round(100.0 * int(node["in_flight"] or 0) / capacity, 1)


def _peaks(snap: FleetSnapshot) -> dict[str, float]:
    """This moment's gauges worth remembering; zero is what a missing member means."""
    queues = _busiest({m: float(d) for m, d in snap.queue_depth.items()}, MAX_QUEUES)
    loads = _busiest({str(n["id"]): _load_pct(n) for n in snap.nodes}, MAX_NODES)
    return {
        **{_QUEUE + m: v for m, v in queues.items()},
        **{_LOAD + n: v for n, v in loads.items()},
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Bucket:
    counts: dict[str, int]
    peaks: dict[str, float]

    def histogram(self, prefix: str) -> dict[int, int]:
        return {
            int(k[len(prefix) :]): v
            for k, v in self.counts.items()
            if k.startswith(prefix) and k[len(prefix) :].isdigit()
        }

    def by_name(self, prefix: str) -> dict[str, int]:
        return {k[len(prefix) :]: v for k, v in self.counts.items() if k.startswith(prefix)}


def _names(buckets: Iterable[_Bucket], prefix: str, *, peaks: bool) -> list[str]:
    found = {
        k[len(prefix) :]
        for b in buckets
        for k in (b.peaks if peaks else b.counts)
        if k.startswith(prefix)
    }
    return sorted(found)


def build_series(starts: list[int], buckets: list[_Bucket]) -> dict[str, Any]:
    """The charts' data: one value per bucket, oldest first; None where nothing was seen."""
    requests = [sum(b.by_name(_REQUESTS).values()) for b in buckets]
    errors = [sum(b.by_name(_ERRORS).values()) for b in buckets]
    error_rate = [round(e / n, 4) if n else None for e, n in zip(errors, requests, strict=True)]
    latency = [b.histogram(_LATENCY) for b in buckets]
    ttft = [b.histogram(_TTFT) for b in buckets]
    models = sorted(
        set(_names(buckets, _REQUESTS, peaks=False)) | set(_names(buckets, _QUEUE, peaks=True))
    )
    return {
        "bucket_s": BUCKET_S,
        "starts": starts,
        "requests_per_s": [round(n / BUCKET_S, 3) for n in requests],
        "error_rate": error_rate,
        "latency_ms": {
            "p50": [quantile_ms(h, 0.5) for h in latency],
            "p99": [quantile_ms(h, 0.99) for h in latency],
        },
        "ttft_ms": {
            "p50": [quantile_ms(h, 0.5) for h in ttft],
            "p99": [quantile_ms(h, 0.99) for h in ttft],
        },
        "models": {
            m: {
                "requests_per_s": [
                    round(b.counts.get(_REQUESTS + m, 0) / BUCKET_S, 3) for b in buckets
                ],
                "queue_depth": [b.peaks.get(_QUEUE + m, 0.0) for b in buckets],
            }
            for m in models
        },
        "node_load_pct": {
            n: [b.peaks.get(_LOAD + n, 0.0) for b in buckets]
            for n in _names(buckets, _LOAD, peaks=True)
        },
    }


class HistoryView:
    """The window as read from Redis: one pipelined read, shared and cached like the fleet
    view, so any number of open dashboards cost Redis one read per replica per second."""

    def __init__(self, redis: Any, keys: Keys, view: FleetView, *, ttl_s: float = 1.0) -> None:
        self._redis = redis
        self._keys = keys
        self._view = view
        self._shared = SharedRead(self._read, ttl_s)

    async def series(self) -> dict[str, Any]:
        return await self._shared.get()

    async def _read(self) -> dict[str, Any]:
        snap = await self._view.snapshot()
        return await self.read_at(snap.taken_at)

    async def read_at(self, now_s: float) -> dict[str, Any]:
        """The ``BUCKETS`` buckets closed by ``now_s`` (Redis clock). The bucket still
        filling is left out: its rate would read low until it closes, and replicas reading
        it a moment apart would disagree."""
        last = bucket_start(now_s) - BUCKET_S
        starts = [last - BUCKET_S * i for i in range(BUCKETS - 1, -1, -1)]
        pipe = self._redis.pipeline(transaction=False)
        for start in starts:
            pipe.hgetall(self._keys.history(start))
            pipe.zrange(self._keys.history_peaks(start), 0, -1, withscores=True)
        raw = await pipe.execute()
        buckets = [
            _Bucket(
                counts={_text(k): int(v) for k, v in raw[2 * i].items()},
                peaks={_text(k): float(v) for k, v in raw[2 * i + 1]},
            )
            for i in range(len(starts))
        ]
        return build_series(starts, buckets)
