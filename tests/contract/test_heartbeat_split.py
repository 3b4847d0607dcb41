"""Heartbeats that change nothing skip the routing state; those that change it apply it.

Runs on the embedded store and on a real redis-server (the ``store`` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract.fleet import Fleet, sleep_ms
from contract.heartbeat_scenario import BEATS, FULL, A, B, C, records_after_each_beat
from llm_router.state.beat_split import latency_band, runtime_pressure

GOLDEN = Path(__file__).parent / "golden" / "heartbeat_records.json"
COLD = 1e8


async def _registered(fleet: Fleet) -> Any:
    reg = await fleet.register("n1", [A, B], installed=[A, B, C], max_concurrency=4, score=8000)
    assert await fleet.heartbeat(reg, **FULL) == "ok"
    return reg


async def _hget(fleet: Fleet, node_id: str, name: str) -> str | None:
    raw = await fleet.redis.hget(fleet.keys.node(node_id), name)
    return raw.decode() if isinstance(raw, bytes) else raw


async def _score(fleet: Fleet, node_id: str, model: str) -> float | None:
    raw = await fleet.redis.zscore(fleet.keys.model_load(model), node_id)
    return None if raw is None else float(raw)


async def test_records_read_as_before_metrics_were_packed(fleet: Fleet) -> None:
    assert await records_after_each_beat(fleet) == json.loads(GOLDEN.read_text())


async def test_an_unchanged_beat_stores_metrics_and_liveness_and_skips_routing_state(
    fleet: Fleet,
) -> None:
    reg = await _registered(fleet)
    deadline = await fleet.redis.zscore(fleet.keys.nodes_alive, reg.node_id)
    seen = (await fleet.registry.get_node(reg.node_id) or {})["last_seen"]
    # A routing field planted behind the script's back: a beat that re-applied its routing
    # state would overwrite it, the unchanged beat leaves it.
    await fleet.redis.hset(fleet.keys.node(reg.node_id), "runtime_kind", "planted")
    await sleep_ms(5)
    assert await fleet.heartbeat(reg, **BEATS[1]) == "ok"
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None
    assert record["cpu_usage"] == 20.0 and record["gpu_temperature"] == 62.0
    assert record["average_response_time_ms"] == 450.0
    assert record["runtime_load"] == {"running": 2, "waiting": 0, "kv_cache_usage": 0.25}
    assert record["last_seen"] > seen
    assert await fleet.redis.zscore(fleet.keys.nodes_alive, reg.node_id) > deadline
    assert record["runtime_kind"] == "planted"
    # Metrics are one field, not one each.
    assert await _hget(fleet, reg.node_id, "cpu_usage") is None


# (beat fields laid over FULL, what must hold on that very beat)
CHANGES: dict[str, tuple[dict[str, Any], str, float]] = {
    # name: (change, model whose entry moves, by how much; nan: leaves the index)
    "capability": ({"gpu_capability_score": 9000}, A, -1000 * 1e2),
    "latency band": ({"average_response_time_ms": 900.0}, A, 1),
    # FULL's pressure of 1 is held at the registration's 0 (within the hysteresis): 0 -> 4.
    "pressure": ({"runtime_load": {"running": 1, "waiting": 3, "kv_cache_usage": 0.2}}, A, 4e7),
    "warm set": ({"loaded_models": [B]}, A, COLD),
    "status": ({"runtime_status": "loading"}, A, float("nan")),
    "executable set": ({"executable_models": [B]}, A, float("nan")),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
async def test_a_changed_routing_field_takes_effect_on_that_beat(fleet: Fleet, name: str) -> None:
    change, model, delta = CHANGES[name]
    reg = await _registered(fleet)
    assert await fleet.heartbeat(reg, **FULL) == "ok"  # unchanged
    before = await _score(fleet, reg.node_id, model)
    assert before is not None
    assert await fleet.heartbeat(reg, **{**FULL, **change}) == "ok"
    after = await _score(fleet, reg.node_id, model)
    if delta != delta:
        assert after is None
    else:
        assert after == before + delta


async def test_a_changed_max_concurrency_takes_effect_on_that_beat(fleet: Fleet) -> None:
    reg = await _registered(fleet)
    await fleet.lease(A)
    held = await _score(fleet, reg.node_id, A)
    assert await fleet.heartbeat(reg, **{**FULL, "max_concurrency": 8}) == "ok"
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["max_concurrency"] == 8
    # One of 8 slots instead of one of 4: the raised entry came down with it.
    assert (await _score(fleet, reg.node_id, A) or 0) < (held or 0)


async def test_pressure_jitter_keeps_the_floor_and_the_digest(fleet: Fleet) -> None:
    reg = await _registered(fleet)
    busy = {**FULL, "runtime_load": {"running": 1, "waiting": 2, "kv_cache_usage": 0.2}}
    assert await fleet.heartbeat(reg, **busy) == "ok"  # pressure 3 in force
    floor = await _hget(fleet, reg.node_id, "floor_base")
    jitter = {**FULL, "runtime_load": {"running": 1, "waiting": 3, "kv_cache_usage": 0.2}}
    assert await fleet.heartbeat(reg, **jitter) == "ok"
    assert await _hget(fleet, reg.node_id, "floor_base") == floor
    digest = (await _hget(fleet, reg.node_id, "state_digest") or "").split("@")[0]
    assert await fleet.heartbeat(reg, **jitter) == "ok"
    assert (await _hget(fleet, reg.node_id, "state_digest") or "").split("@")[0] == digest
    assert await _hget(fleet, reg.node_id, "floor_base") == floor


async def test_absent_lists_keep_and_empty_ones_replace_across_unchanged_beats(
    fleet: Fleet,
) -> None:
    reg = await _registered(fleet)
    absent = {k: v for k, v in FULL.items() if k != "executable_models"}
    for _ in range(2):  # the second is an unchanged beat
        assert await fleet.heartbeat(reg, **absent) == "ok"
        record = await fleet.registry.get_node(reg.node_id)
        assert record is not None and record["executable_models"] == [A, B]
        assert await _score(fleet, reg.node_id, A) is not None
    assert await fleet.heartbeat(reg, **{**FULL, "executable_models": []}) == "ok"
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["executable_models"] == []
    assert await _score(fleet, reg.node_id, A) is None


async def test_a_metric_left_out_keeps_its_last_value(fleet: Fleet) -> None:
    reg = await _registered(fleet)
    without = {k: v for k, v in FULL.items() if k != "gpu_usage"}
    for cpu in (11.0, 12.0):  # a changed beat (the set of metrics), then an unchanged one
        assert await fleet.heartbeat(reg, **{**without, "cpu_usage": cpu}) == "ok"
        record = await fleet.registry.get_node(reg.node_id)
        assert record is not None
        assert record["gpu_usage"] == 55.0 and record["cpu_usage"] == cpu
    # A full beat (another capacity) with the same metrics sent: the kept one stays kept.
    assert await fleet.heartbeat(reg, **{**without, "max_concurrency": 8}) == "ok"
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["gpu_usage"] == 55.0 and record["max_concurrency"] == 8
    assert await fleet.heartbeat(reg, **{**FULL, "gpu_usage": 60.0}) == "ok"
    assert (await fleet.registry.get_node(reg.node_id) or {})["gpu_usage"] == 60.0
    assert await fleet.heartbeat(reg, **{**FULL, "gpu_usage": 61.0, "max_concurrency": 2}) == "ok"
    assert (await fleet.registry.get_node(reg.node_id) or {})["gpu_usage"] == 61.0
    assert await _hget(fleet, reg.node_id, "metrics_kept") is None


async def test_an_older_replicas_beat_in_between_is_not_skipped_over(fleet: Fleet) -> None:
    reg = await _registered(fleet)
    key = fleet.keys.node(reg.node_id)
    # What a replica of the previous version writes: every field itself, last_seen too.
    now = await fleet.now_ms()
    await fleet.redis.hset(
        key, mapping={"max_concurrency": "8", "cpu_usage": "99.0", "last_seen": str(now + 1)}
    )
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["cpu_usage"] == 99.0 and record["max_concurrency"] == 8
    # The node still says 4: the same digest as before, yet the state is applied again.
    assert await fleet.heartbeat(reg, **FULL) == "ok"
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["max_concurrency"] == 4 and record["cpu_usage"] == 10.5


async def test_a_re_registration_in_between_is_not_skipped_over(fleet: Fleet) -> None:
    reg = await _registered(fleet)
    again = await fleet.register("n1", [A, B], installed=[A, B, C], max_concurrency=2)
    assert again.node_id == reg.node_id
    assert await fleet.heartbeat(again, **FULL) == "ok"
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["max_concurrency"] == 4
    assert record["gpu_capability_score"] == 8000.0


async def test_an_unchanged_beat_ends_the_leases_of_a_dead_replica(fleet: Fleet) -> None:
    reg = await _registered(fleet)
    now = await fleet.now_ms()
    await fleet.redis.zadd(fleet.keys.leases(reg.node_id), {"dead-replica": now - 1})
    assert await fleet.heartbeat(reg, **FULL) == "ok"
    assert await fleet.redis.zcard(fleet.keys.leases(reg.node_id)) == 0


async def test_the_replicas_bands_are_the_scripts(fleet: Fleet) -> None:
    """The digest folds latency and pressure as lib.lua folds them into the floor."""
    for i, ms in enumerate([0.0, 99.9, 100.0, 250.0, 399.0, 400.0, 3200.0, 6400.0, 20000.0]):
        reg = await fleet.register(f"lat{i}", [A], score=8000)
        assert await fleet.heartbeat(reg, average_response_time_ms=ms) == "ok"
        assert int(float(await _hget(fleet, reg.node_id, "floor_base") or "-1")) % 100 == (
            latency_band(ms)
        )
    for i, (waiting, kv) in enumerate([(0, 0.0), (2, 0.0), (0, 0.45), (1, 0.99), (8, 1.0)]):
        load = {"waiting": waiting, "kv_cache_usage": kv}
        reg = await fleet.register(f"load{i}", [A], score=8000)
        assert await fleet.heartbeat(reg, runtime_load=load) == "ok"
        floor = int(float(await _hget(fleet, reg.node_id, "floor_base") or "-1"))
        assert floor // 10**7 % 10 == runtime_pressure(load)


async def test_a_replica_that_expects_no_change_falls_back_to_the_full_beat(fleet: Fleet) -> None:
    reg = await _registered(fleet)
    assert await fleet.heartbeat(reg, **FULL) == "ok"  # this replica now expects FULL's digest
    other = fleet.with_timing()  # a second replica on the same store
    assert await fleet.heartbeat(reg, registry=other, **{**FULL, "max_concurrency": 8}) == "ok"
    # The first replica's light call finds another digest stored: it sends the whole beat.
    assert await fleet.heartbeat(reg, **FULL) == "ok"
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["max_concurrency"] == 4
    assert await _score(fleet, reg.node_id, A) is not None


async def test_the_node_hash_keeps_its_small_encoding(fleet: Fleet, store_kind: str) -> None:
    """Every value the heartbeat adds to the node hash fits the 64 bytes of a listpack entry:
    one longer value turns the whole hash into a table (≈ 1.7 KB more per node)."""
    reg = await fleet.register("small", [A], score=8000)
    for cpu in (10.0, 11.0):  # a full beat, then an unchanged one
        assert (
            await fleet.heartbeat(
                reg,
                **{
                    **FULL,
                    "cpu_usage": cpu,
                    "executable_models": [A],
                    "models": [A],
                    "loaded_models": [A],
                },
            )
            == "ok"
        )
    raw = await fleet.redis.hgetall(fleet.keys.node(reg.node_id))
    added = {"state_digest", "last_seen", "alive_until"}
    long = {
        k: v
        for k, v in raw.items()
        if (k.decode() if isinstance(k, bytes) else k) in added and len(v) > 64
    }
    assert long == {}
    if store_kind == "real":
        encoding = await fleet.redis.object("encoding", fleet.keys.node(reg.node_id))
        assert encoding in (b"listpack", "listpack", b"ziplist", "ziplist")
