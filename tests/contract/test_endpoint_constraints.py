"""What the endpoint table asks of the acquire step: skipping nodes that declined an
endpoint family, and following a stored response to the one node holding it.

Runs on the embedded store and on a real redis-server (the ``store`` fixture).
"""

from __future__ import annotations

from collections import Counter

from contract.fleet import Fleet, sleep_ms
from llm_router.state.scripts import Ending, Granted, Refused

M = "llama-3-8b.gguf"


async def _decline(fleet: Fleet, model: str, family: str, cooldown_ms: int = 60_000) -> str:
    """One attempt on the model's best node that ends with 'this node does not do that'."""
    lease = await fleet.lease(model, family=family)
    await fleet.scripts.release_many(
        [Ending(lease.node_id, lease.lease_id, cooldown_ms=cooldown_ms, refused_family=family)]
    )
    return lease.node_id


async def test_a_declined_family_skips_the_node_for_that_family_only(fleet: Fleet) -> None:
    a = await fleet.register("box-a", [M], max_concurrency=8)
    b = await fleet.register("box-b", [M], max_concurrency=8)
    declined = await _decline(fleet, M, "embeddings")
    other = b.node_id if declined == a.node_id else a.node_id

    for _ in range(4):
        lease = await fleet.lease(M, family="embeddings")
        assert lease.node_id == other
    # Nothing was excluded for the model: chat still rotates over both nodes.
    chats = Counter([(await fleet.lease(M, family="chat")).node_id for _ in range(6)])
    assert set(chats) == {a.node_id, b.node_id}
    assert await fleet.zmembers(fleet.keys.excluded(declined)) == {}
    assert set(await fleet.zmembers(fleet.keys.unsupported(declined))) == {"embeddings"}


async def test_every_node_declining_is_unsupported_not_unknown(fleet: Fleet) -> None:
    await fleet.register("box-a", [M])
    await _decline(fleet, M, "rerank")
    assert await fleet.acquire(M, family="rerank") == Refused("unsupported")
    assert isinstance(await fleet.acquire(M, family="chat"), Granted)


async def test_a_declined_family_is_asked_again_after_the_cool_down(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    await _decline(fleet, M, "audio", cooldown_ms=1)
    await sleep_ms(20)
    # The cool-down ended: the key expired with it and the node is asked again.
    lease = await fleet.lease(M, family="audio")
    assert lease.node_id == reg.node_id


async def _record(fleet: Fleet, response_id: str) -> str:
    lease = await fleet.lease(M)
    await fleet.scripts.release_many(
        [Ending(lease.node_id, lease.lease_id, response_id=response_id, response_model=M)]
    )
    return lease.node_id


async def test_a_stored_response_pins_its_node_whatever_the_load(fleet: Fleet) -> None:
    await fleet.register("box-a", [M], max_concurrency=4)
    await fleet.register("box-b", [M], max_concurrency=4)
    holder = await _record(fleet, "resp_1")
    record = await fleet.redis.hgetall(fleet.keys.response("resp_1"))
    assert {k.decode(): v.decode() for k, v in record.items()} == {"node": holder, "model": M}
    assert await fleet.redis.pttl(fleet.keys.response("resp_1")) > 0

    # Three pinned leases on the holder: the other node is idle, the pin still wins.
    for _ in range(3):
        assert (await fleet.lease(M, response_id="resp_1")).node_id == holder
    # Full: the pinned request waits for that node instead of going elsewhere.
    await fleet.lease(M, response_id="resp_1")
    queued = await fleet.acquire(M, response_id="resp_1")
    assert not isinstance(queued, Granted)


async def test_a_response_whose_node_is_gone_is_response_gone(fleet: Fleet) -> None:
    reg = await fleet.register("box-a", [M])
    await fleet.register("box-b", [M])
    holder = await _record(fleet, "resp_2")
    assert await fleet.acquire(M, response_id="resp_unknown") == Refused("response_gone")
    if holder != reg.node_id:
        reg = await fleet.register("box-b", [M])
    assert reg.node_id == holder
    assert await fleet.registry.deregister(holder, "") != "unauthorized"
    assert await fleet.acquire(M, response_id="resp_2") == Refused("response_gone")
