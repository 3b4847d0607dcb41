"""The split of a heartbeat into display metrics and digested routing state."""

from __future__ import annotations

import json

from llm_router.state.beat_split import split_beat

BASE = {
    "cpu_usage": "10.5",
    "gpu_temperature": "61.0",
    "average_response_time_ms": "420.0",
    "runtime_load": '{"waiting":0,"kv_cache_usage":0.2}',
    "runtime_status": "ready",
    "max_concurrency": "4",
}
EXEC = ["a", "b"]


def _digest(fields: dict[str, str], executable: list[str] | None = EXEC) -> str:
    return split_beat(fields, executable).digest


def test_metrics_travel_packed_and_stay_out_of_the_routing_fields() -> None:
    split = split_beat(BASE, EXEC)
    assert "cpu_usage" not in split.fields and "gpu_temperature" not in split.fields
    # The scripts read the raw latency and load from the hash: they stay in both halves.
    assert split.fields["average_response_time_ms"] == "420.0"
    assert json.loads(split.metrics) == {
        "cpu_usage": "10.5",
        "gpu_temperature": "61.0",
        "average_response_time_ms": "420.0",
        "runtime_load": '{"waiting":0,"kv_cache_usage":0.2}',
    }


def test_jitter_within_the_bands_keeps_the_digest() -> None:
    moved = {
        **BASE,
        "cpu_usage": "99.0",
        "average_response_time_ms": "799.0",
        "runtime_load": '{"waiting":0,"kv_cache_usage":0.39,"running":7}',
    }
    assert _digest(moved) == _digest(BASE)


def test_every_routing_input_moves_the_digest() -> None:
    base = _digest(BASE)
    changed = [
        _digest({**BASE, "average_response_time_ms": "800.0"}),
        _digest({**BASE, "runtime_load": '{"waiting":1,"kv_cache_usage":0.2}'}),
        _digest({**BASE, "max_concurrency": "5"}),
        _digest({**BASE, "runtime_status": "loading"}),
        _digest({k: v for k, v in BASE.items() if k != "gpu_temperature"}),
        _digest({k: v for k, v in BASE.items() if k != "average_response_time_ms"}),
        _digest(BASE, ["a"]),
        _digest(BASE, []),
        _digest(BASE, None),
    ]
    assert base not in changed
    assert len(set(changed)) == len(changed)
