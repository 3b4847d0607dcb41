"""A node's runtime status decides, on each heartbeat, whether it routes and is listed.

Runs on the embedded store and on a real redis-server (the ``store`` fixture).
"""

from __future__ import annotations

from contract.fleet import Fleet
from llm_router.protocol import RegisterRequest
from llm_router.state.scripts import Granted, Refused

M = "tiny.gguf"
M2 = "other.gguf"


async def _listed(fleet: Fleet) -> list[str]:
    return [entry.id for entry in await fleet.registry.list_models()]


async def test_unreachable_runtime_leaves_routing_and_listing_on_that_heartbeat(
    fleet: Fleet,
) -> None:
    reg = await fleet.register("box-a", [M])
    assert await _listed(fleet) == [M]

    # Even a beat that still names the model (an agent that keeps its list) takes it out.
    await fleet.heartbeat(reg, runtime_status="unreachable", executable_models=[M])
    assert await _listed(fleet) == []
    assert await fleet.registry.get_nodes_for_model(M) == []
    refused = await fleet.acquire(M)
    # The model stays known: a request for it is "no capable node", not "no such model".
    assert isinstance(refused, Refused) and refused.reason == "no_capable"
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["runtime_status"] == "unreachable"
    assert record["status"] == "online"

    await fleet.heartbeat(reg, runtime_status="ready", executable_models=[M])
    assert await _listed(fleet) == [M]
    assert isinstance(await fleet.acquire(M), Granted)


async def test_every_non_ready_status_is_out(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    for status in ("loading", "unreachable", "unauthorized"):
        await fleet.heartbeat(reg, runtime_status=status)
        assert await _listed(fleet) == [], status
        await fleet.heartbeat(reg, runtime_status="ready")
        assert await _listed(fleet) == [M], status


async def test_other_nodes_keep_serving_the_model(fleet: Fleet) -> None:
    down = await fleet.register("down", [M])
    up = await fleet.register("up", [M, M2])
    await fleet.heartbeat(down, runtime_status="unreachable")
    assert await _listed(fleet) == sorted([M, M2])
    for _ in range(3):
        granted = await fleet.acquire(M)
        assert isinstance(granted, Granted) and granted.node_id == up.node_id


async def test_registration_with_a_down_runtime_is_out_until_ready(fleet: Fleet) -> None:
    reg = await fleet.registry.register(
        _register_request("box-a", runtime_status="unreachable"),
        executable_models=[M],
        gpu_backend=None,
    )
    assert await _listed(fleet) == []
    await fleet.heartbeat(reg, runtime_status="ready")
    assert await _listed(fleet) == [M]


async def test_recovery_lifts_the_exclusions_of_the_outage(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    lease = await fleet.lease(M)
    # The runtime died under a request: the router excluded the pair for a cool-down.
    await fleet.release(lease, exclude_model=M, cooldown_ms=600_000)
    await fleet.heartbeat(reg, runtime_status="unreachable")
    assert await fleet.redis.exists(fleet.keys.excluded(reg.node_id)) == 1

    await fleet.heartbeat(reg, runtime_status="ready")
    assert await fleet.redis.exists(fleet.keys.excluded(reg.node_id)) == 0
    nodes = await fleet.registry.get_nodes_for_model(M)
    assert [n["id"] for n in nodes] == [reg.node_id]
    assert isinstance(await fleet.acquire(M), Granted)


async def test_ready_heartbeat_without_an_outage_keeps_exclusions(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    await fleet.heartbeat(reg, runtime_status="ready")
    lease = await fleet.lease(M)
    await fleet.release(lease, exclude_model=M, cooldown_ms=600_000)
    await fleet.heartbeat(reg, runtime_status="ready")
    assert await fleet.redis.exists(fleet.keys.excluded(reg.node_id)) == 1
    assert await fleet.registry.get_nodes_for_model(M) == []


async def test_agent_without_runtime_status_is_taken_at_its_word(fleet: Fleet) -> None:
    reg = await fleet.register("old-agent", [M])
    await fleet.heartbeat(reg, executable_models=[M])
    assert await _listed(fleet) == [M]


async def test_runtime_fields_are_stored_and_shown(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M, M2])
    await fleet.heartbeat(
        reg,
        runtime_status="ready",
        runtime_kind="llamacpp",
        runtime_version="b6500-abc",
        loaded_models=[M],
        runtime_load={"running": 1, "waiting": 0, "kv_cache_usage": 0.25},
        max_concurrency=2,
        max_concurrency_source="runtime",
    )
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None
    assert record["runtime_kind"] == "llamacpp"
    assert record["runtime_version"] == "b6500-abc"
    assert record["loaded_models"] == [M]
    assert record["runtime_load"] == {"running": 1, "waiting": 0, "kv_cache_usage": 0.25}
    assert record["max_concurrency"] == 2
    assert record["max_concurrency_source"] == "runtime"

    await fleet.heartbeat(reg, runtime_status="ready", runtime_load={})
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["runtime_load"] == {}


def _register_request(name: str, **fields: object) -> RegisterRequest:
    return RegisterRequest.model_validate(
        {"machine_name": name, "ip_address": "127.0.0.1", "runtime_port": 8000, **fields}
    )
