"""The scripts as one Redis function library (FCALL), and the EVALSHA path beside it."""

from __future__ import annotations

from contract.fleet import Fleet
from llm_router.state.registry import NodeRegistry
from llm_router.state.scripts import FleetScripts, Granted, Queued

M = "fn-model"


async def test_calls_go_through_the_function_library(fleet: Fleet) -> None:
    await fleet.register("box", [M])
    assert fleet.scripts.uses_functions is True
    granted = await fleet.lease(M)
    assert await fleet.release(granted) == 0


async def test_a_store_that_lost_the_library_gets_it_again(fleet: Fleet) -> None:
    reg = await fleet.register("box", [M])
    await fleet.redis.function_flush()  # what a restart without persistence leaves
    assert await fleet.heartbeat(reg) == "ok"
    assert fleet.scripts.uses_functions is True
    assert isinstance(await fleet.acquire(M), Granted)


async def test_the_evalsha_path_gives_the_same_answers(fleet: Fleet) -> None:
    scripts = FleetScripts(fleet.redis, fleet.keys, functions=False)
    registry = NodeRegistry(fleet.redis, fleet.keys, scripts, fleet.config)
    plain = Fleet(fleet.store, fleet.keys, scripts, registry, fleet.config)
    reg = await plain.register("box", [M], max_concurrency=1)
    lease = await plain.lease(M)
    assert isinstance(await plain.acquire(M), Queued)
    assert await plain.release(lease) == 0
    assert await plain.heartbeat(reg) == "ok"
    assert scripts.uses_functions is False
