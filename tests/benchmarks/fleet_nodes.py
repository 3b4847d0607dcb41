"""The virtual fleet of the fleet simulation: a model catalog, nodes drawn from it, the two
ways of speaking the node protocol (straight to the scripts, or over HTTP), and the
heartbeat clock that keeps every node beating once per interval, spread evenly.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from tests.benchmarks.fleet_adapter import HeartbeatRequest, RegisterRequest
from tests.benchmarks.loadgen import percentile

GPU = {"model": "NVIDIA GeForce RTX 4090", "count": 1, "memory": 24564}


@dataclass(frozen=True)
class Catalog:
    """Popular models (drawn by a Zipf weight: the head sits on most nodes, the tail on
    a few per cent) and rare ones (each on exactly ``rare_nodes`` nodes)."""

    popular: list[str]
    weights: list[float]
    rare: list[str]
    rare_nodes: int

    @classmethod
    def make(cls, popular: int, rare: int, rare_nodes: int, zipf_s: float) -> Catalog:
        names = [f"org/fleet-model-{k:03d}-Q4_K_M.gguf" for k in range(popular)]
        weights = [1.0 / (k + 1) ** zipf_s for k in range(popular)]
        rares = [f"org/fleet-rare-{k:03d}-Q4_K_M.gguf" for k in range(rare)]
        return cls(names, weights, rares, rare_nodes)

    @property
    def size(self) -> int:
        return len(self.popular) + len(self.rare)

    def draw(self, rng: random.Random, count: int, exclude: Sequence[str] = ()) -> list[str]:
        """``count`` distinct popular models, weighted, without replacement
        (Efraimidis-Spirakis: the largest u^(1/w) keys)."""
        skip = set(exclude)
        keys = [
            (rng.random() ** (1.0 / w), name)
            for name, w in zip(self.popular, self.weights, strict=True)
            if name not in skip
        ]
        return [name for _, name in heapq.nlargest(count, keys)]

    def models_for(self, index: int, rng: random.Random, lo: int, hi: int) -> list[str]:
        count = rng.randint(lo, hi)
        rare = (
            self.rare[index // self.rare_nodes] if index < len(self.rare) * self.rare_nodes else ""
        )
        drawn = self.draw(rng, count - (1 if rare else 0))
        return [rare, *drawn] if rare else drawn


@dataclass
class VirtualNode:
    index: int
    models: list[str]
    load: dict[str, float]
    node_id: str = ""
    token: str = ""
    #: The heartbeat as the agent would send it; rebuilt only when something changes.
    body: dict[str, Any] = field(default_factory=dict)
    beat: HeartbeatRequest | None = None
    wire: bytes = b""

    @property
    def machine_name(self) -> str:
        return f"fleet-sim-{self.index:05d}"

    def loaded(self) -> list[str]:
        return self.models[:2]  # two resident models: the warm bit is in play

    def register_body(self, upstream_port: int) -> dict[str, Any]:
        """What ``llm-router node`` registers (``register_body`` in the agent)."""
        return {
            "machine_name": self.machine_name,
            "ip_address": "127.0.0.1",
            "runtime_port": upstream_port - 1,
            "node_api_port": upstream_port,
            "gpu_available": True,
            "gpu_devices": [GPU],
            "gpu_count": 1,
            "gpu_backend": "cuda",
            "gpu_capability_score": 8000,
            "models": self.models,
            "executable_models": self.models,
            "loaded_models": self.loaded(),
            "runtime_status": "ready",
            "runtime_kind": "vllm",
            "runtime_load": self.load,
            "max_concurrency": 4,
            "scheme": "http",
        }

    def refresh_beat(self) -> None:
        """The agent's ``heartbeat_body``: every list field present, as a real agent sends."""
        self.body = {
            "node_id": self.node_id,
            "cpu_usage": 20.0 + self.index % 50,
            "memory_usage": 40.0,
            "active_requests": 0,
            "models": self.models,
            "gpu_backend": "cuda",
            "initializing": False,
            "ready_models": [len(self.models), len(self.models)],
            "executable_models": self.models,
            "loaded_models": self.loaded(),
            "runtime_status": "ready",
            "runtime_load": self.load,
            "max_concurrency": 4,
            "runtime_kind": "vllm",
            "average_response_time_ms": 420.0,
            "gpu_model_name": GPU["model"],
            "gpu_capability_score": 8000,
        }
        self.beat = HeartbeatRequest.model_validate(self.body)
        self.wire = json.dumps(self.body).encode()

    def change(self, rng: random.Random, catalog: Catalog) -> str:
        """What a small share of real heartbeats carry: one model swapped, or new load."""
        if rng.random() < 0.5:
            self.load = {
                "running": rng.randint(0, 4),
                "waiting": rng.randint(0, 2),
                "kv_cache_usage": round(rng.random(), 2),
            }
            kind = "load"
        else:
            popular = [m for m in self.models if m not in catalog.rare]
            if not popular:
                return ""
            gone = rng.choice(popular)
            (new,) = catalog.draw(rng, 1, exclude=self.models)
            self.models = [new if m == gone else m for m in self.models]
            kind = "model"
        self.refresh_beat()
        return kind


class Transport(Protocol):
    name: str

    async def register(self, node: VirtualNode) -> None: ...

    async def beat(self, node: VirtualNode) -> str: ...


class ScriptTransport:
    """Straight to the registry layer (the code a replica runs for ``/v0/nodes`` and
    ``/v0/health`` after parsing), every call on one multiplexed Redis link."""

    name = "scripts"

    def __init__(self, registry: Any, upstream_port: int) -> None:
        self.registry = registry
        self.upstream_port = upstream_port

    async def register(self, node: VirtualNode) -> None:
        request = RegisterRequest.model_validate(node.register_body(self.upstream_port))
        reg = await self.registry.register(
            request, executable_models=node.models, gpu_backend="cuda"
        )
        node.node_id, node.token = reg.node_id, reg.token
        node.refresh_beat()

    async def beat(self, node: VirtualNode) -> str:
        assert node.beat is not None
        return str(await self.registry.heartbeat(node.beat, node.token))


class HttpTransport:
    """The real node protocol: ``POST /v0/nodes`` and ``/v0/health`` to the replicas (node
    ``i`` talks to replica ``i mod replicas``, as behind a load balancer)."""

    name = "http"

    def __init__(self, session: aiohttp.ClientSession, urls: list[str], upstream_port: int):
        self.session = session
        self.urls = urls
        self.upstream_port = upstream_port

    def _url(self, node: VirtualNode, path: str) -> str:
        return self.urls[node.index % len(self.urls)] + path

    async def register(self, node: VirtualNode) -> None:
        body = node.register_body(self.upstream_port)
        async with self.session.post(self._url(node, "/v0/nodes"), json=body) as response:
            data = await response.json()
            if response.status not in (200, 201):
                raise RuntimeError(f"registration answered {response.status}: {data}")
        node.node_id, node.token = data["node_id"], data["node_token"]
        node.refresh_beat()

    async def beat(self, node: VirtualNode) -> str:
        headers = {"X-Node-Token": node.token, "Content-Type": "application/json"}
        async with self.session.post(
            self._url(node, "/v0/health"), data=node.wire, headers=headers
        ) as response:
            await response.read()
            return {200: "ok", 404: "not_found", 401: "unauthorized"}.get(
                response.status, f"HTTP {response.status}"
            )


@dataclass
class BeatWindow:
    """Heartbeats completed while a measurement ran."""

    latencies_us: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)
    tick_lag_ms: list[float] = field(default_factory=list)
    skipped: int = 0

    def summary(self, seconds: float) -> dict[str, Any]:
        lat = self.latencies_us
        return {
            "beats": len(lat),
            "beats_per_s": len(lat) / seconds if seconds else 0.0,
            "p50_ms": percentile(lat, 50) / 1000 if lat else None,
            "p99_ms": percentile(lat, 99) / 1000 if lat else None,
            "max_ms": max(lat) / 1000 if lat else None,
            "statuses": dict(self.statuses),
            "changes": dict(self.changes),
            "tick_lag_p99_ms": percentile(self.tick_lag_ms, 99) if self.tick_lag_ms else None,
            "skipped_driver_behind": self.skipped,
        }


#: Successive nodes land on ticks this far apart (a fraction of the interval): the golden
#: ratio's low-discrepancy sequence spreads any number of nodes evenly, and keeps doing so
#: as the fleet grows.
_GOLDEN = (5**0.5 - 1) / 2


class HeartbeatClock:
    """Beats every node once per ``interval_s``. The interval is cut into ticks and node
    ``i`` beats on tick ``frac(i * golden) * ticks``, so every tick carries about the same
    share at any fleet size: a steady stream, not bursts. Each beat is its own task; many
    are in flight at once on the shared link."""

    def __init__(
        self,
        transport: Transport,
        catalog: Catalog,
        *,
        interval_s: float,
        change_share: float,
        tick_s: float = 0.01,
        max_in_flight: int = 4096,
        seed: int = 11,
    ) -> None:
        self.transport = transport
        self.catalog = catalog
        self.interval_s = interval_s
        self.change_share = change_share
        self.tick_s = tick_s
        self.ticks = max(1, round(interval_s / tick_s))
        self.buckets: list[list[VirtualNode]] = [[] for _ in range(self.ticks)]
        self.max_in_flight = max_in_flight
        self.rng = random.Random(seed)
        self.window: BeatWindow | None = None
        self.errors: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    def add(self, nodes: Sequence[VirtualNode]) -> None:
        for node in nodes:
            self.buckets[int((node.index * _GOLDEN) % 1.0 * self.ticks)].append(node)

    def measure(self) -> BeatWindow:
        self.window = BeatWindow()
        return self.window

    def end_measure(self) -> BeatWindow:
        window, self.window = self.window, None
        assert window is not None
        return window

    async def _one(self, node: VirtualNode) -> None:
        window = self.window
        if self.change_share and self.rng.random() < self.change_share:
            kind = node.change(self.rng, self.catalog)
            if window is not None and kind:
                window.changes[kind] = window.changes.get(kind, 0) + 1
        start = time.perf_counter()
        try:
            status = await self.transport.beat(node)
        except Exception as exc:  # counted and shown, never fatal: the fleet goes on
            status = type(exc).__name__
            if len(self.errors) < 5:
                self.errors.append(f"heartbeat: {exc!r}")
        elapsed = (time.perf_counter() - start) * 1e6
        if status == "not_found":  # forgotten (should not happen): re-register, as agents do
            await self.transport.register(node)
        if window is not None and window is self.window:
            window.statuses[status] = window.statuses.get(status, 0) + 1
            if status == "ok":
                window.latencies_us.append(elapsed)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        k = 0
        while not self._stop.is_set():
            due = start + k * self.tick_s
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            window = self.window
            if window is not None:
                window.tick_lag_ms.append(max(0.0, -delay) * 1000)
            for node in self.buckets[k % self.ticks]:
                if len(self._tasks) >= self.max_in_flight:
                    if window is not None:
                        window.skipped += 1
                    continue
                task = asyncio.create_task(self._one(node))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            k += 1

    async def stop(self) -> None:
        """Stop beating; beats still waiting on a stalled store are abandoned, not awaited."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def grow(
    nodes: list[VirtualNode],
    target: int,
    clock: HeartbeatClock,
    rng: random.Random,
    models_range: tuple[int, int],
    batch: int = 200,
) -> float:
    """Register nodes until there are ``target``, each beating from then on; returns the
    seconds it took."""
    transport, catalog = clock.transport, clock.catalog
    began = time.perf_counter()
    lo, hi = models_range
    while len(nodes) < target:
        new = [
            VirtualNode(i, catalog.models_for(i, rng, lo, hi), {"running": 0, "waiting": 0})
            for i in range(len(nodes), min(len(nodes) + batch, target))
        ]
        for attempt in range(5):  # a store that timed out fails every call on the link
            done = await asyncio.gather(
                *(transport.register(n) for n in new if not n.node_id), return_exceptions=True
            )
            errors = [e for e in done if isinstance(e, BaseException)]
            if not errors:
                break
            if attempt == 4:
                raise errors[0]
            await asyncio.sleep(1.0)  # as an agent backs off before registering again
        nodes.extend(new)
        clock.add(new)
    return time.perf_counter() - began


def model_spread(nodes: Sequence[VirtualNode]) -> dict[str, int]:
    """Nodes per model, over the fleet."""
    counts: dict[str, int] = {}
    for node in nodes:
        for m in node.models:
            counts[m] = counts.get(m, 0) + 1
    return counts


def request_mix(
    nodes: Sequence[VirtualNode], catalog: Catalog, rare_share: float, top: int
) -> list[dict[str, Any]]:
    """Requests for the ``top`` most served popular models (weighted by how many nodes serve
    each, as demand follows supply), and ``rare_share`` of them for the rare models."""
    spread = model_spread(nodes)
    popular = sorted((m for m in catalog.popular if m in spread), key=lambda m: -spread[m])[:top]
    rare = [m for m in catalog.rare if m in spread]
    mix = [
        {
            "model": m,
            "weight": (1 - rare_share) * spread[m] / sum(spread[p] for p in popular),
            "class": "many",
            "nodes": spread[m],
        }
        for m in popular
    ]
    if rare and rare_share > 0:
        mix += [
            {"model": m, "weight": rare_share / len(rare), "class": "few", "nodes": spread[m]}
            for m in rare
        ]
    return mix


def spread_summary(nodes: Sequence[VirtualNode], catalog: Catalog) -> dict[str, Any]:
    spread = model_spread(nodes)
    counts = sorted(spread.values())
    pairs = sum(counts)
    return {
        "models_served": len(counts),
        "catalog": catalog.size,
        "pairs": pairs,
        "models_per_node_mean": pairs / len(nodes) if nodes else 0.0,
        "nodes_per_model_min": counts[0] if counts else 0,
        "nodes_per_model_median": counts[len(counts) // 2] if counts else 0,
        "nodes_per_model_max": counts[-1] if counts else 0,
        "popular_under_1pct": sum(
            1 for m in catalog.popular if spread.get(m, 0) < math.ceil(len(nodes) / 100)
        ),
    }
