"""The evidence that excludes a (node, model) pair, counted in Redis by ``fail.lua``, and
the per-request avoid list of ``acquire``.

Runs on the embedded store and on a real redis-server (the ``store`` fixture).
"""

from __future__ import annotations

from contract.fleet import Fleet, sleep_ms
from llm_router.state.scripts import FailureReport, Granted, Refused

M = "llama-3-8b.gguf"
OTHER = "qwen2-7b.gguf"
COOLDOWN_MS = 60_000


def evidence(digest: str, *, window_ms: int = 30_000, withdraw_from: str = "") -> FailureReport:
    return FailureReport(
        model=M,
        exclude_now=False,
        cooldown_ms=COOLDOWN_MS,
        digest=digest,
        counts=True,
        failures_to_exclude=3,
        window_ms=window_ms,
        withdraw_from=withdraw_from,
    )


async def excluded_models(fleet: Fleet, node_id: str) -> set[str]:
    return set(await fleet.zmembers(fleet.keys.excluded(node_id)))


async def test_three_different_failing_requests_exclude_the_pair(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M, OTHER])
    assert not await fleet.fail(await fleet.lease(M), evidence("r1"))
    assert not await fleet.fail(await fleet.lease(M), evidence("r2"))
    assert await excluded_models(fleet, reg.node_id) == set()
    assert isinstance(await fleet.acquire(M), Granted), "two failures exclude nothing"

    assert await fleet.fail(await fleet.lease(M), evidence("r3"))
    assert await excluded_models(fleet, reg.node_id) == {M}
    assert await fleet.acquire(M) == Refused("no_capable")
    assert isinstance(await fleet.acquire(OTHER), Granted), "only the pair is excluded"
    # The count starts afresh after the cool-down.
    assert not await fleet.redis.exists(fleet.keys.failures(reg.node_id, M))


async def test_one_request_failing_again_and_again_is_one_failure(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    for _ in range(5):
        assert not await fleet.fail(await fleet.lease(M), evidence("same-request"))
    assert await excluded_models(fleet, reg.node_id) == set()
    assert await fleet.live_leases(reg.node_id) == 0


async def test_failures_older_than_the_window_do_not_count(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    await fleet.fail(await fleet.lease(M), evidence("r1", window_ms=150))
    await fleet.fail(await fleet.lease(M), evidence("r2", window_ms=150))
    key = fleet.keys.failures(reg.node_id, M)
    assert 0 < await fleet.redis.pttl(key) <= 150, "the evidence expires by itself"
    await sleep_ms(250)
    assert not await fleet.fail(await fleet.lease(M), evidence("r3", window_ms=150))
    assert await excluded_models(fleet, reg.node_id) == set()


async def test_an_unreachable_node_is_excluded_at_once(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    report = FailureReport(model=M, exclude_now=True, cooldown_ms=COOLDOWN_MS)
    assert await fleet.fail(await fleet.lease(M), report)
    scores = await fleet.zmembers(fleet.keys.excluded(reg.node_id))
    assert set(scores) == {M}
    assert await fleet.live_leases(reg.node_id) == 0


async def test_a_request_failing_on_a_second_node_withdraws_its_first_failure(
    fleet: Fleet,
) -> None:
    a = await fleet.register("box-a", [M], port=8000)
    b = await fleet.register("box-b", [M], port=8100)
    await fleet.fail(await fleet.lease(M), evidence("earlier-1"))
    first = await fleet.lease(M)
    await fleet.fail(first, evidence("poison"))
    on_first = fleet.keys.failures(first.node_id, M)
    assert "poison" in await fleet.zmembers(on_first)

    second = await fleet.lease(M, avoid=[first.node_id])
    assert second.node_id != first.node_id
    suspect = FailureReport(
        model=M,
        exclude_now=False,
        cooldown_ms=COOLDOWN_MS,
        digest="poison",
        withdraw_from=first.node_id,
    )
    assert not await fleet.fail(second, suspect)
    assert "poison" not in await fleet.zmembers(on_first)
    assert "poison" not in await fleet.zmembers(fleet.keys.failures(second.node_id, M))
    assert {a.node_id, b.node_id} == {first.node_id, second.node_id}


async def test_a_withdrawal_needs_no_lease(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    await fleet.fail(await fleet.lease(M), evidence("r1"))
    withdraw = FailureReport(
        model=M, exclude_now=False, cooldown_ms=0, digest="r1", withdraw_from=reg.node_id
    )
    assert not await fleet.scripts.fail(node_id="", lease_id="", report=withdraw)
    assert not await fleet.redis.exists(fleet.keys.failures(reg.node_id, M))


async def test_acquire_never_picks_a_node_the_request_avoids(fleet: Fleet) -> None:
    best = await fleet.register("box-a", [M], port=8000, score=9000)
    other = await fleet.register("box-b", [M], port=8100, score=1000)
    for _ in range(3):
        lease = await fleet.lease(M, avoid=[best.node_id])
        assert lease.node_id == other.node_id
        await fleet.release(lease)
    assert (await fleet.lease(M)).node_id == best.node_id, "others still get the best node"
    assert await fleet.acquire(M, avoid=[best.node_id, other.node_id]) == Refused("no_capable")
