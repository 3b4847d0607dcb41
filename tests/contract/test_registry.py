"""Registration, heartbeats, liveness, model views, prune and deregistration.

Runs on the embedded store and on a real redis-server (the ``store`` fixture).
"""

from __future__ import annotations

import pytest

from contract.fleet import Fleet, sleep_ms
from llm_router.errors import Forbidden
from llm_router.protocol import RegisterRequest
from llm_router.state.scripts import Granted, Queued, Refused

M = "llama-3-8b.gguf"
M2 = "qwen2-7b.gguf"

# --- register ----------------------------------------------------------------------------


async def test_first_registration_creates_then_same_identity_updates(fleet: Fleet) -> None:
    first = await fleet.register("box-a", [M], port=9000)
    assert first.created is True
    again = await fleet.register("box-a", [M], port=9000)
    assert again.created is False
    assert again.node_id == first.node_id
    assert again.token != first.token
    index = await fleet.redis.hget(fleet.keys.nodes_index, "box-a:9000")
    assert index.decode() == first.node_id


async def test_identity_is_machine_name_and_runtime_port(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M], port=9000)
    other_port = await fleet.register("box-a", [M], port=9002)
    other_name = await fleet.register("box-b", [M], port=9000)
    assert other_port.created and other_name.created
    assert len({a.node_id, other_port.node_id, other_name.node_id}) == 3


async def test_reregistration_revokes_old_token(fleet: Fleet) -> None:
    first = await fleet.register("box-a", [M])
    again = await fleet.register("box-a", [M])
    assert await fleet.heartbeat(first, token=first.token) == "unauthorized"
    assert await fleet.heartbeat(again) == "ok"


async def test_reregistration_clears_exclusions(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    lease = await fleet.lease(M)
    await fleet.release(lease, exclude_model=M, cooldown_ms=60_000)
    assert await fleet.registry.get_nodes_for_model(M) == []

    await fleet.register("box-a", [M])
    nodes = await fleet.registry.get_nodes_for_model(M)
    assert [n["id"] for n in nodes] == [reg.node_id]
    assert await fleet.redis.exists(fleet.keys.excluded(reg.node_id)) == 0
    assert isinstance(await fleet.acquire(M), Granted)


async def test_a_drain_outlives_heartbeats_re_registration_and_removal(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    assert await fleet.registry.drain(reg.node_id) is True
    assert await fleet.heartbeat(reg, executable_models=[M]) == "ok"
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["status"] == "draining"
    assert await fleet.acquire(M) == Refused("no_capable")

    again = await fleet.register("box-a", [M])
    record = await fleet.registry.get_node(again.node_id)
    assert record is not None and record["status"] == "draining"
    assert await fleet.acquire(M) == Refused("no_capable")

    assert await fleet.registry.deregister(again.node_id) == "ok"
    back = await fleet.register("box-a", [M])
    assert back.node_id != reg.node_id
    assert await fleet.registry.drained_identities() != {}
    assert await fleet.acquire(M) == Refused("no_capable")

    assert await fleet.registry.drain(back.node_id, draining=False) is True
    record = await fleet.registry.get_node(back.node_id)
    assert record is not None and record["status"] == "online"
    assert record["draining"] is False
    assert await fleet.registry.drained_identities() == {}
    assert isinstance(await fleet.acquire(M), Granted)


async def test_an_identity_is_drained_before_it_registers(fleet: Fleet) -> None:
    assert await fleet.registry.drain_identity("box-b:8000", draining=False) is False
    assert await fleet.registry.drain_identity("box-b:8000") is True
    assert await fleet.registry.drain_identity("", draining=True) is False
    reg = await fleet.register("box-b", [M])
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["status"] == "draining"


async def test_reregistration_replaces_the_executable_set(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M, M2])
    await fleet.register("box-a", [M2])
    assert reg.node_id not in await fleet.zmembers(fleet.keys.model_nodes(M))
    assert reg.node_id not in await fleet.zmembers(fleet.keys.model_load(M))
    assert await fleet.acquire(M) == Refused("no_capable")
    assert [e.id for e in await fleet.registry.list_models()] == [M2]


async def test_installed_models_equal_to_executable_ones_are_stored_once(fleet: Fleet) -> None:
    reg = await fleet.register("box", [M, M2], installed=[M, M2])
    key = fleet.keys.node(reg.node_id)
    assert not await fleet.redis.hexists(key, "models")
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["models"] == [M, M2]

    await fleet.heartbeat(reg, executable_models=[M], models=[M, M2])
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and (record["executable_models"], record["models"]) == (
        [M],
        [M, M2],
    )
    await fleet.heartbeat(reg, executable_models=[M2], models=[M2])
    assert not await fleet.redis.hexists(key, "models")
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["models"] == [M2]
    assert [e.id for e in await fleet.registry.list_models()] == [M2]


async def test_a_beat_without_installed_models_keeps_them_when_the_executable_set_changes(
    fleet: Fleet,
) -> None:
    reg = await fleet.register("box", [M, M2], installed=[M, M2])
    # Writing the kept list out is no new installation: the beat leaves models:known to its
    # paced refresh instead of re-marking every installed model.
    await fleet.redis.zadd(fleet.keys.models_known, {M2: 1})
    await fleet.heartbeat(reg, executable_models=[M])
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and (record["executable_models"], record["models"]) == (
        [M],
        [M, M2],
    )
    assert await fleet.redis.zscore(fleet.keys.models_known, M2) == 1


async def test_record_holds_registered_fields_and_no_secret(fleet: Fleet) -> None:
    reg = await fleet.register(
        "box-a", [M], port=9000, installed=[M, M2], max_concurrency=7, backend="metal"
    )
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None
    assert record["id"] == reg.node_id
    assert record["machine_name"] == "box-a"
    assert record["ip_address"] == "127.0.0.1"
    assert record["runtime_port"] == 9000
    assert record["node_api_port"] == 9001
    assert record["gpu_backend"] == "metal"
    assert record["executable_models"] == [M]
    assert sorted(record["models"]) == sorted([M, M2])
    assert record["max_concurrency"] == 7
    assert record["in_flight"] == 0
    assert record["status"] == "online"
    assert "token_hash" not in record
    assert reg.token not in str(record)


async def test_default_max_concurrency_applies(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["max_concurrency"] == fleet.config.default_max_concurrency


# --- heartbeat ---------------------------------------------------------------------------


async def test_heartbeat_for_unknown_node_is_not_found(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    ghost = type(reg)(node_id="0" * 32, created=True, token=reg.token)
    assert await fleet.heartbeat(ghost) == "not_found"
    assert await fleet.redis.exists(fleet.keys.node("0" * 32)) == 0


async def test_heartbeat_with_another_nodes_token_is_unauthorized(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M])
    b = await fleet.register("box-b", [M])
    assert await fleet.heartbeat(a, token=b.token, executable_models=[]) == "unauthorized"
    record = await fleet.registry.get_node(a.node_id)
    assert record is not None and record["executable_models"] == [M]


async def test_heartbeat_replaces_executable_set(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M, M2])
    assert await fleet.heartbeat(reg, executable_models=[M2]) == "ok"

    assert reg.node_id not in await fleet.zmembers(fleet.keys.model_nodes(M))
    assert reg.node_id not in await fleet.zmembers(fleet.keys.model_load(M))
    assert reg.node_id in await fleet.zmembers(fleet.keys.model_nodes(M2))
    assert reg.node_id in await fleet.zmembers(fleet.keys.model_load(M2))
    assert await fleet.registry.get_nodes_for_model(M) == []
    assert [m.id for m in await fleet.registry.list_models()] == [M2]
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["executable_models"] == [M2]
    assert isinstance(await fleet.acquire(M), Refused)


async def test_heartbeat_without_list_keeps_stored_set(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M, M2])
    assert await fleet.heartbeat(reg, cpu_usage=12.5) == "ok"
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None
    assert record["executable_models"] == [M, M2]
    assert record["cpu_usage"] == 12.5
    assert [n["id"] for n in await fleet.registry.get_nodes_for_model(M2)] == [reg.node_id]


async def test_heartbeat_with_empty_list_empties_the_set(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M, M2])
    assert await fleet.heartbeat(reg, executable_models=[]) == "ok"
    record = await fleet.registry.get_node(reg.node_id)
    assert record is not None and record["executable_models"] == []
    assert await fleet.registry.list_models() == []
    for model in (M, M2):
        assert await fleet.zmembers(fleet.keys.model_nodes(model)) == {}
        assert await fleet.zmembers(fleet.keys.model_load(model)) == {}
        # Still remembered: the fleet has seen it, nobody can run it now.
        assert await fleet.acquire(model) == Refused("no_capable")


async def test_heartbeat_adds_a_new_model(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    await fleet.heartbeat(reg, executable_models=[M, M2])
    lease = await fleet.lease(M2)
    assert lease.node_id == reg.node_id


async def test_heartbeat_updates_last_seen(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    before = await fleet.registry.get_node(reg.node_id)
    await sleep_ms(20)
    await fleet.heartbeat(reg)
    after = await fleet.registry.get_node(reg.node_id)
    assert before is not None and after is not None
    assert after["last_seen"] > before["last_seen"]
    assert after["alive_until"] > before["alive_until"]


# --- liveness ----------------------------------------------------------------------------


async def test_node_goes_offline_without_heartbeat_and_comes_back(fleet: Fleet) -> None:
    short = fleet.with_timing(alive_ttl_ms=200)
    reg = await fleet.register("box-a", [M], registry=short)
    assert [m.id for m in await short.list_models()] == [M]

    await sleep_ms(250)
    record = await short.get_node(reg.node_id)
    assert record is not None and record["status"] == "offline"
    assert await short.list_models() == []
    assert await short.get_nodes_for_model(M) == []
    assert await fleet.acquire(M) == Refused("no_capable")

    assert await fleet.heartbeat(reg, registry=short) == "ok"
    record = await short.get_node(reg.node_id)
    assert record is not None and record["status"] == "online"
    assert [m.id for m in await short.list_models()] == [M]
    assert [n["id"] for n in await short.get_nodes_for_model(M)] == [reg.node_id]
    assert isinstance(await fleet.acquire(M), Granted)


# --- get_nodes_for_model -----------------------------------------------------------------


async def test_get_nodes_for_model_filters(fleet: Fleet) -> None:
    short = fleet.with_timing(alive_ttl_ms=100)
    dead = await fleet.register("dead", [M], registry=short)
    good = await fleet.register("good", [M])
    draining = await fleet.register("draining", [M])
    excluded = await fleet.register("excluded", [M])
    other = await fleet.register("other", [M2])
    init = await fleet.register("init", [M])

    assert await fleet.registry.drain(draining.node_id)
    assert await fleet.heartbeat(init, initializing=True) == "ok"
    # Exclude one pair through the real path: a lease released as failed.
    await fleet.scripts.release(
        node_id=excluded.node_id, lease_id="x", exclude_model=M, cooldown_ms=60_000
    )
    await sleep_ms(150)

    nodes = await fleet.registry.get_nodes_for_model(M)
    assert [n["id"] for n in nodes] == [good.node_id]
    assert nodes[0]["status"] == "online"
    ids_for_other = [n["id"] for n in await fleet.registry.get_nodes_for_model(M2)]
    assert ids_for_other == [other.node_id]
    assert dead.node_id not in ids_for_other
    statuses = {n["id"]: n["status"] for n in await fleet.registry.list_nodes()}
    assert statuses[dead.node_id] == "offline"
    assert statuses[draining.node_id] == "draining"
    assert statuses[init.node_id] == "initializing"
    assert statuses[excluded.node_id] == "online"


async def test_model_match_is_exact_and_case_sensitive(fleet: Fleet) -> None:
    await fleet.register("box-a", ["Llama-3"])
    assert await fleet.registry.get_nodes_for_model("llama-3") == []
    assert await fleet.registry.get_nodes_for_model("Llama") == []
    assert await fleet.acquire("llama-3") == Refused("not_found")


async def test_initializing_node_is_back_once_ready(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    await fleet.heartbeat(reg, initializing=True)
    assert await fleet.acquire(M) == Refused("no_capable")
    await fleet.heartbeat(reg, initializing=False)
    assert isinstance(await fleet.acquire(M), Granted)


# --- list_models -------------------------------------------------------------------------


async def test_list_models_is_the_sorted_union_over_live_nodes(fleet: Fleet) -> None:
    await fleet.register("mac", ["b-model", "a-model"], backend="metal")
    await fleet.register("nv", ["b-model", "c-model"], backend="cuda")
    await fleet.register("cpu", ["b-model"], backend="cpu")
    entries = await fleet.registry.list_models()
    assert [e.id for e in entries] == ["a-model", "b-model", "c-model"]
    by_id = {e.id: e for e in entries}
    assert by_id["b-model"].node_count == 3
    assert by_id["b-model"].backends == ["cpu", "cuda", "metal"]
    assert by_id["a-model"].node_count == 1
    assert by_id["a-model"].backends == ["metal"]
    assert by_id["c-model"].backends == ["cuda"]
    assert all(e.created > 1_600_000_000 for e in entries)


async def test_list_models_follows_a_backend_change(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M], backend="cpu")
    assert (await fleet.registry.list_models())[0].backends == ["cpu"]
    await fleet.heartbeat(reg, gpu_backend="rocm")
    assert (await fleet.registry.list_models())[0].backends == ["rocm"]


async def test_installed_but_not_executable_is_known_not_listed(fleet: Fleet) -> None:
    await fleet.register("box-a", [M], installed=[M, "only-on-metal-mlx"])
    assert [e.id for e in await fleet.registry.list_models()] == [M]
    assert await fleet.acquire("only-on-metal-mlx") == Refused("no_capable")
    assert await fleet.acquire("never-seen") == Refused("not_found")


async def test_installed_models_from_heartbeat_become_known(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    assert await fleet.acquire("late-mlx") == Refused("not_found")
    await fleet.heartbeat(reg, models=[M, "late-mlx"])
    assert await fleet.acquire("late-mlx") == Refused("no_capable")
    assert [e.id for e in await fleet.registry.list_models()] == [M]


# --- prune -------------------------------------------------------------------------------


async def test_prune_forgets_offline_nodes_and_their_models(fleet: Fleet) -> None:
    short = fleet.with_timing(alive_ttl_ms=100, forget_ms=200)
    gone = await fleet.register("gone", [M], installed=[M, "gone-installed"], registry=short)
    kept = await fleet.register("kept", [M2])
    await sleep_ms(350)

    nodes, models = await short.prune()
    assert nodes == 1
    assert models >= 1
    assert await fleet.redis.exists(fleet.keys.node(gone.node_id)) == 0
    assert await fleet.redis.hget(fleet.keys.nodes_index, "gone:8000") is None
    assert gone.node_id not in await fleet.zmembers(fleet.keys.nodes_alive)
    assert [n["id"] for n in await short.list_nodes()] == [kept.node_id]
    assert await fleet.registry.get_node(gone.node_id) is None
    assert M not in await fleet.zmembers(fleet.keys.models_known)
    assert "gone-installed" not in await fleet.zmembers(fleet.keys.models_known)
    assert await fleet.acquire(M, forget_ms=200) == Refused("not_found")
    # With the long clock too: the model is gone, not merely old.
    assert await fleet.acquire(M) == Refused("not_found")
    assert await fleet.heartbeat(gone, registry=short) == "not_found"
    # The live node and its model are untouched.
    assert isinstance(await fleet.acquire(M2, forget_ms=200), Granted)


async def test_prune_leaves_nothing_behind_a_crashed_fleet(fleet: Fleet) -> None:
    """A node and the replicas that used it all died: once forgotten, nothing of them stays.

    The lease and the queue ticket are never released or renewed (their replicas are
    gone), so only expiry and prune can clean up after them.
    """
    short = fleet.with_timing(alive_ttl_ms=100, forget_ms=200)
    await fleet.register("gone", [M], installed=[M, "other-mlx"], max_concurrency=1, registry=short)
    await fleet.lease(M, lease_ttl_ms=100)
    assert isinstance(await fleet.acquire(M, ticket="t1", ticket_ttl_ms=100), Queued)
    await sleep_ms(350)

    assert (await short.prune())[0] == 1
    # Only the fleet's models stamp remains: a counter, nothing of the node.
    assert await fleet.all_keys() == [fleet.keys.models_version]


async def test_deregistered_nodes_leases_expire_by_themselves(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    await fleet.lease(M, lease_ttl_ms=100)
    assert await fleet.registry.deregister(reg.node_id) == "ok"
    await sleep_ms(250)
    assert await fleet.redis.exists(fleet.keys.leases(reg.node_id)) == 0


async def test_prune_keeps_recent_nodes(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    assert await fleet.registry.prune() == (0, 0)
    assert await fleet.registry.get_node(reg.node_id) is not None


async def test_offline_node_is_still_listed_until_forgotten(fleet: Fleet) -> None:
    short = fleet.with_timing(alive_ttl_ms=100)
    reg = await fleet.register("box-a", [M], registry=short)
    await sleep_ms(150)
    listed = {n["id"]: n["status"] for n in await fleet.registry.list_nodes()}
    assert listed == {reg.node_id: "offline"}
    # Remembered, so it is a 503 case (known), not a 404.
    assert await fleet.acquire(M) == Refused("no_capable")


# --- deregister --------------------------------------------------------------------------


async def test_deregister_with_other_nodes_token_is_unauthorized(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M])
    b = await fleet.register("box-b", [M])
    assert await fleet.registry.deregister(a.node_id, b.token) == "unauthorized"
    assert await fleet.registry.get_node(a.node_id) is not None


async def test_deregister_by_node_itself(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M])
    assert await fleet.registry.deregister(a.node_id, a.token) == "ok"
    assert await fleet.registry.get_node(a.node_id) is None
    assert await fleet.registry.deregister(a.node_id, a.token) == "not_found"
    # The agent learns it on its next heartbeat and registers again.
    assert await fleet.heartbeat(a) == "not_found"


async def test_deregister_by_admin_leaves_only_leases(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M, M2], installed=[M, M2, "x-mlx"], max_concurrency=2)
    b = await fleet.register("box-b", ["b-only"])
    failed = await fleet.lease(M)
    assert failed.node_id == a.node_id
    await fleet.release(failed, exclude_model=M, cooldown_ms=60_000)
    assert await fleet.redis.exists(fleet.keys.excluded(a.node_id)) == 1
    lease_a = await fleet.lease(M2)
    assert lease_a.node_id == a.node_id
    await fleet.heartbeat(a, gpu_capability_score=100)

    assert await fleet.registry.deregister(a.node_id) == "ok"

    for key in await fleet.all_keys():
        if key == fleet.keys.leases(a.node_id):
            continue
        assert a.node_id not in key, f"{key} survived the deregistration"
        assert a.node_id not in await fleet.dump(key), f"{key} still names the node"
    assert await fleet.redis.zcard(fleet.keys.leases(a.node_id)) == 1
    # Its holder releases it harmlessly.
    assert await fleet.release(lease_a) == 0
    assert await fleet.redis.exists(fleet.keys.node(a.node_id)) == 0
    # The other node carries on.
    assert [n["id"] for n in await fleet.registry.list_nodes()] == [b.node_id]
    # A re-registration after removal is a new node.
    again = await fleet.register("box-a", [M])
    assert again.created is True
    assert again.node_id != a.node_id


async def test_deregister_unknown_node(fleet: Fleet) -> None:
    assert await fleet.registry.deregister("nope") == "not_found"


async def test_drain_unknown_node(fleet: Fleet) -> None:
    assert await fleet.registry.drain("nope") is False


async def test_a_node_key_holds_a_bounded_number_of_identities(fleet: Fleet) -> None:
    def request(name: str) -> RegisterRequest:
        return RegisterRequest.model_validate(
            {"machine_name": name, "ip_address": "127.0.0.1", "runtime_port": 8000}
        )

    async def register(name: str, key_id: str = "key-a") -> str:
        reg = await fleet.registry.register(
            request(name), executable_models=[M], gpu_backend="cpu", key_id=key_id,
            max_identities=2,
        )  # fmt: skip
        return reg.node_id

    first = await register("one")
    await register("two")
    with pytest.raises(Forbidden):
        await register("three")
    await register("one")  # an identity the key holds may always register again
    await register("three", key_id="key-b")  # another key has its own bound
    await register("four", key_id="")  # admin keys are not bounded
    assert await fleet.registry.deregister(first) == "ok"
    await register("three")  # a removed identity frees its place
    assert await fleet.redis.scard(fleet.keys.key_identities("key-a")) == 2
