"""The dashboard's history: latency histograms that merge across replicas, and the
bucketed counts and peaks every replica adds to in the store and reads back identically.

Runs on the embedded store (the same Redis commands as a real server) with real node
records: leases and queue tickets are the store's own sets, as the fleet scripts write them.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from llm_router.observability.fleet_view import FleetView
from llm_router.observability.history import (
    BUCKET_S,
    BUCKETS,
    WINDOW_S,
    HistoryRecorder,
    HistoryView,
    bucket_start,
    sample_period_ms,
)
from llm_router.observability.metrics import Counter
from llm_router.observability.quantiles import TOP_INDEX, bucket_of, quantile_ms
from llm_router.protocol import RegisterRequest
from llm_router.state.connect import open_store
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, RegistryConfig
from llm_router.state.scripts import FleetScripts


def test_quantiles_of_a_merged_histogram_are_within_the_scale_error() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(-3.0, 1.0) for _ in range(20_000)]  # seconds, median ~50 ms
    halves: list[dict[int, int]] = [{}, {}]
    for i, s in enumerate(samples):
        part = halves[i % 2]
        part[bucket_of(s)] = part.get(bucket_of(s), 0) + 1
    merged = {k: halves[0].get(k, 0) + halves[1].get(k, 0) for k in {*halves[0], *halves[1]}}
    ordered = sorted(samples)
    for q in (0.5, 0.99):
        exact_ms = ordered[int(q * len(ordered))] * 1000
        got = quantile_ms(merged, q)
        assert got is not None and abs(got - exact_ms) / exact_ms < 0.09, (q, got, exact_ms)
    assert quantile_ms({}, 0.5) is None
    assert bucket_of(0.0) == 0 and bucket_of(1e9) == TOP_INDEX


class Replica:
    def __init__(self, store: object, keys: Keys, registry: NodeRegistry) -> None:
        redis = store.redis  # type: ignore[attr-defined]
        self.view = FleetView(redis, keys, registry, forget_ms=600_000, ttl_s=0.0)
        self.dropped = Counter("dropped_total", "dropped")
        self.recorder = HistoryRecorder(redis, keys, self.view, self.dropped)
        self.history = HistoryView(redis, keys, self.view, ttl_s=0.0)


@pytest.fixture
async def fleet() -> tuple[object, Keys, NodeRegistry, str]:
    store = open_store(None)
    keys = Keys("hist")
    registry = NodeRegistry(
        store.redis,
        keys,
        FleetScripts(store.redis, keys),
        RegistryConfig(alive_ttl_ms=60_000, forget_ms=600_000, default_max_concurrency=4),
    )
    request = RegisterRequest.model_validate(
        {"machine_name": "n1", "ip_address": "127.0.0.1", "runtime_port": 9000}
        | {"gpu_backend": "cuda"}
    )
    reply = await registry.register(request, executable_models=["m1"], gpu_backend="cuda")
    return store, keys, registry, reply.node_id


async def _now_ms(redis: object) -> int:
    seconds, micros = await redis.time()  # type: ignore[attr-defined]
    return int(seconds) * 1000 + int(micros) // 1000


async def test_two_replicas_fill_the_same_buckets_and_read_the_same_series(
    fleet: tuple[object, Keys, NodeRegistry, str],
) -> None:
    store, keys, registry, node_id = fleet
    redis = store.redis  # type: ignore[attr-defined]
    a, b = Replica(store, keys, registry), Replica(store, keys, registry)
    now_ms = await _now_ms(redis)
    while now_ms % (BUCKET_S * 1000) > BUCKET_S * 1000 - 1500:
        # Too close to the next bucket: the flushes below must land in one bucket.
        await asyncio.sleep(0.25)
        now_ms = await _now_ms(redis)
    # Two requests in flight on the node (capacity 4) and three live tickets queued for m1.
    await redis.zadd(keys.leases(node_id), {"l1": now_ms + 60_000, "l2": now_ms + 60_000})
    await redis.zadd(keys.queue_alive("m1"), {f"t{i}": now_ms + 60_000 for i in range(3)})
    for _ in range(30):
        a.recorder.record("m1", 200, False, 0.040, 0.010)
    for _ in range(10):
        b.recorder.record("m1", 503, False, 0.400, None)
    b.recorder.record("m1", 200, True, 2.0, 0.010)  # a broken stream counts as an error
    b.recorder.record("m1", 404, False, 0.001, None)  # the client's mistake does not
    await a.recorder.flush()
    await b.recorder.flush()
    # A later, lower sample (the next sampling period) does not lower the bucket's peak.
    await redis.delete(keys.leases(node_id), keys.queue_alive("m1"), keys.history_sampler)
    await a.recorder.flush()

    # Still filling, the bucket is not shown; once closed, both replicas read the same.
    filling = bucket_start(now_ms / 1000)
    assert filling not in (await a.history.series())["starts"]
    closed_at = filling + BUCKET_S + 0.5
    first, second = await a.history.read_at(closed_at), await b.history.read_at(closed_at)
    assert first == second
    assert len(first["starts"]) == BUCKETS and first["starts"][-1] == filling
    assert first["requests_per_s"][-1] == pytest.approx(42 / BUCKET_S)
    assert sum(first["requests_per_s"][:-1]) == 0
    assert first["error_rate"][-1] == pytest.approx(11 / 42, abs=1e-4)
    assert first["error_rate"][0] is None
    p50, p99 = first["latency_ms"]["p50"][-1], first["latency_ms"]["p99"][-1]
    assert 36 < p50 < 44 and 360 < p99 < 2200
    assert 9 < first["ttft_ms"]["p50"][-1] < 11
    assert first["models"]["m1"]["queue_depth"][-1] == 3
    assert first["models"]["m1"]["requests_per_s"][-1] == pytest.approx(4.2)
    assert first["node_load_pct"][node_id][-1] == 50.0

    ttl = await redis.ttl(keys.history(first["starts"][-1]))
    assert WINDOW_S < ttl <= WINDOW_S + BUCKET_S + 60
    assert 0 < await redis.ttl(keys.history_peaks(first["starts"][-1])) <= ttl


async def test_an_unreachable_store_drops_the_counts_and_says_so(
    fleet: tuple[object, Keys, NodeRegistry, str],
) -> None:
    store, keys, registry, _ = fleet
    replica = Replica(store, keys, registry)
    await replica.view.snapshot()
    down = open_store("redis://127.0.0.1:1/0", timeout_s=0.2)
    redis = store.redis  # type: ignore[attr-defined]
    cached = FleetView(redis, keys, registry, forget_ms=600_000, ttl_s=60.0)
    await cached.snapshot()  # the view still answers from its cache; the write fails
    recorder = HistoryRecorder(down.redis, keys, cached, replica.dropped)
    recorder.record("m1", 200, False, 0.01, None)
    recorder.record("m1", 200, False, 0.01, None)
    await recorder.flush()
    assert replica.dropped.value() == 2
    await down.close()


class CountingView(FleetView):
    reads = 0

    async def snapshot(self):  # type: ignore[no-untyped-def]
        CountingView.reads += 1
        return await super().snapshot()


async def test_one_replica_samples_the_fleet_per_period_however_many_run(
    fleet: tuple[object, Keys, NodeRegistry, str],
) -> None:
    """The peaks read every node record: replicas take turns, they do not each read."""
    store, keys, registry, _ = fleet
    redis = store.redis  # type: ignore[attr-defined]
    CountingView.reads = 0
    recorders = []
    for _ in range(4):
        view = CountingView(redis, keys, registry, forget_ms=600_000, ttl_s=0.0)
        recorders.append(HistoryRecorder(redis, keys, view, Counter("d_total", "d")))
    for recorder in recorders:
        recorder.record("m1", 200, False, 0.040, None)
        await recorder.flush()
    assert CountingView.reads == 1
    # Every replica's counts still land.
    seconds, _ = await redis.time()
    landed = 0
    for start in (bucket_start(int(seconds)), bucket_start(int(seconds)) - BUCKET_S):
        counts = await redis.hgetall(keys.history(start))  # the flushes may straddle an edge
        landed += sum(int(v) for k, v in counts.items() if k.startswith(b"r:"))
    assert landed == 4
    # The period held by the sampler: at least the flush period, longer as the fleet grows.
    assert 0 < await redis.pttl(keys.history_sampler) <= sample_period_ms(1)
    assert sample_period_ms(1) == sample_period_ms(100) < sample_period_ms(10_000) == 20_000
    # The next period, someone samples again.
    await redis.delete(keys.history_sampler)
    await recorders[2].flush()
    assert CountingView.reads == 2
