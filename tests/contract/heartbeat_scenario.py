"""A node's life in beats, read back through the registry after each one.

The records it yields are compared with ``golden/heartbeat_records.json``: what the registry
showed for the same beats before metrics were packed into one field (times and the node's
id left out, they differ from run to run).
"""

from __future__ import annotations

from typing import Any

from contract.fleet import Fleet

A, B, C = "org/a.gguf", "org/b.gguf", "org/c.gguf"
VARYING = frozenset({"id", "last_seen", "registered_at", "alive_until"})

FULL: dict[str, Any] = {
    "cpu_usage": 10.5,
    "memory_usage": 40.0,
    "active_requests": 2,
    "gpu_usage": 55.0,
    "gpu_memory_usage": 70.0,
    "gpu_memory_total_mb": 24000.0,
    "gpu_memory_used_mb": 16000.0,
    "gpu_temperature": 61.0,
    "gpu_model_name": "RTX 4090",
    "gpu_compute_capability": "8.9",
    "gpu_capability_score": 8000,
    "average_response_time_ms": 420.0,
    "loaded_models": [A],
    "executable_models": [A, B],
    "models": [A, B, C],
    "initializing": False,
    "ready_models": [1, 2],
    "runtime_status": "ready",
    "runtime_kind": "vllm",
    "runtime_version": "0.6.3",
    "runtime_load": {"running": 1, "waiting": 0, "kv_cache_usage": 0.2},
    "max_concurrency_source": "runtime",
    "gpu_backend": "cuda",
    "max_concurrency": 4,
}
_ABSENT = ("gpu_usage", "gpu_temperature", "loaded_models", "executable_models", "models")
BEATS: list[dict[str, Any]] = [
    FULL,
    # The same routing state, the metrics moved (latency and load within their bands).
    {
        **FULL,
        "cpu_usage": 20.0,
        "active_requests": 3,
        "gpu_temperature": 62.0,
        "average_response_time_ms": 450.0,
        "runtime_load": {"running": 2, "waiting": 0, "kv_cache_usage": 0.25},
    },
    # Lists and some metrics left out: the stored values stay.
    {
        **{k: v for k, v in FULL.items() if k not in _ABSENT},
        "cpu_usage": 30.0,
        "average_response_time_ms": 470.0,
    },
    {
        **{k: v for k, v in FULL.items() if k not in _ABSENT},
        "cpu_usage": 31.0,
        "average_response_time_ms": 480.0,
    },
    # Empty lists replace; the latency crosses a band; the runtime gets busy.
    {
        **FULL,
        "executable_models": [],
        "loaded_models": [],
        "average_response_time_ms": 900.0,
        "runtime_load": {"running": 4, "waiting": 3, "kv_cache_usage": 0.9},
    },
    {**FULL, "cpu_usage": 1.0, "max_concurrency": 8, "runtime_status": "loading"},
]


def stable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in VARYING}


async def records_after_each_beat(fleet: Fleet) -> list[dict[str, Any]]:
    reg = await fleet.register("golden", [A, B], installed=[A, B, C], max_concurrency=4, score=8000)
    out = []
    for beat in BEATS:
        assert await fleet.heartbeat(reg, **beat) == "ok"
        record = await fleet.registry.get_node(reg.node_id)
        assert record is not None
        out.append(stable(record))
    return out
