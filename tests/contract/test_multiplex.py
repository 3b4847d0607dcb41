"""The request path's shared Redis connection, on a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from llm_router.state.connect import open_store
from llm_router.state.multiplex import MultiplexedRedis

ECHO = "return ARGV[1]"


@contextlib.asynccontextmanager
async def shared_connection(url: str) -> AsyncIterator[MultiplexedRedis]:
    """The request path's connection, as the router opens it from its store URL."""
    store = open_store(url, timeout_s=2.0)
    try:
        assert store.fast is not None, f"{url} has no shared connection"
        yield store.fast
    finally:
        await store.close()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def echo_sha(admin: aioredis.Redis) -> str:
    sha: str = await admin.script_load(ECHO)
    return sha


@pytest.fixture
async def fast(redis_url: str) -> AsyncIterator[MultiplexedRedis]:
    async with shared_connection(redis_url) as client:
        yield client


async def test_concurrent_calls_get_their_own_replies_even_when_one_is_cancelled(
    fast: MultiplexedRedis, echo_sha: str
) -> None:
    calls = [asyncio.ensure_future(fast.evalsha(echo_sha, ["{t}:k"], [i])) for i in range(50)]
    calls[10].cancel()
    calls[30].cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    for i, result in enumerate(results):
        if i in (10, 30):
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result == str(i).encode()
    # The link is still in step afterwards.
    assert await fast.evalsha(echo_sha, ["{t}:k"], ["after"]) == b"after"


async def test_selects_the_database_of_the_url(redis_server: object, admin: aioredis.Redis) -> None:
    url = redis_server.url_for_db(7)  # type: ignore[attr-defined]
    sha = await admin.script_load("return redis.call('SET', KEYS[1], ARGV[1])")
    async with shared_connection(url) as client:
        await client.evalsha(sha, ["{t}:db-check"], ["seven"])
    in_db7 = aioredis.from_url(url)
    try:
        assert await in_db7.get("{t}:db-check") == b"seven"
        await in_db7.delete("{t}:db-check")
    finally:
        await in_db7.aclose()
    assert await admin.get("{t}:db-check") is None


async def test_reconnects_after_the_server_drops_the_connection(
    fast: MultiplexedRedis, echo_sha: str, admin: aioredis.Redis
) -> None:
    assert await fast.evalsha(echo_sha, ["{t}:k"], ["one"]) == b"one"
    await admin.client_kill_filter(_type="normal", skipme=True)
    # The call in flight when the connection died may fail; the next one reconnects.
    for _ in range(3):
        try:
            assert await fast.evalsha(echo_sha, ["{t}:k"], ["two"]) == b"two"
            break
        except Exception:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the shared connection did not recover")


async def test_unknown_script_is_reported_as_noscript(fast: MultiplexedRedis) -> None:
    from redis.exceptions import NoScriptError

    with pytest.raises(NoScriptError):
        await fast.evalsha("0" * 40, ["{t}:k"], [])


async def test_fleet_scripts_fall_back_to_loading_a_flushed_script(
    redis_url: str, admin: aioredis.Redis
) -> None:
    from contract.fleet import acquire_unknown_model
    from llm_router.state.scripts import Refused

    await admin.script_flush()  # as after a Redis restart or failover
    assert await acquire_unknown_model(redis_url) == Refused("not_found")


async def test_a_primary_turned_replica_fails_clearly_and_its_link_is_dropped(
    redis_server: object,
) -> None:
    from redis.exceptions import ReadOnlyError

    from redis_server import running_redis_server

    with running_redis_server() as demoted:
        admin = aioredis.from_url(demoted.url)
        try:
            sha = await admin.script_load("return redis.call('SET', KEYS[1], ARGV[1])")
            async with shared_connection(demoted.url) as fast:
                assert await fast.evalsha(sha, ["{t}:role"], ["primary"]) == b"OK"
                first = {c["id"] for c in await admin.client_list() if c["cmd"] == "evalsha"}
                await admin.replicaof("127.0.0.1", redis_server.port)  # type: ignore[attr-defined]
                with pytest.raises(ReadOnlyError):
                    await fast.evalsha(sha, ["{t}:role"], ["replica"])
                await admin.replicaof("no", "one")
                # A new link: the one that reached a replica takes no further calls.
                assert await fast.evalsha(sha, ["{t}:role"], ["again"]) == b"OK"
                now = {c["id"] for c in await admin.client_list() if c["cmd"] == "evalsha"}
                assert now and not now & first
        finally:
            await admin.aclose()


async def test_a_moved_primary_is_followed_while_the_old_one_still_answers(
    redis_server: object,
) -> None:
    """As after a Sentinel failover with the old primary still up: the link to it is
    healthy, so only asking where the primary is now (beside the calls) moves it."""
    from llm_router.state.multiplex import Address, Handshake
    from redis_server import running_redis_server

    old_port: int = redis_server.port  # type: ignore[attr-defined]
    where = [Address("127.0.0.1", old_port)]

    async def locate() -> list[Address]:
        return list(where)

    script = "redis.call('SET', KEYS[1], ARGV[1]); return 1"
    with running_redis_server() as new:
        old_admin, new_admin = aioredis.Redis(port=old_port), aioredis.from_url(new.url)
        fast = MultiplexedRedis(locate, Handshake(), timeout_s=2.0, recheck_s=0.05)
        try:
            sha = await old_admin.script_load(script)
            await new_admin.script_load(script)
            assert await fast.evalsha(sha, ["{t}:moved"], ["old"]) == 1
            where[:] = [Address("127.0.0.1", new.port)]
            for i in range(200):
                await fast.evalsha(sha, ["{t}:moved"], [f"call-{i}"])
                if await new_admin.get("{t}:moved"):
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("calls stayed on the old primary")
        finally:
            await fast.close()
            await old_admin.delete("{t}:moved")
            await old_admin.aclose()
            await new_admin.aclose()


async def test_a_call_not_answered_in_time_times_out_and_the_next_call_reconnects(
    redis_url: str, admin: aioredis.Redis, echo_sha: str
) -> None:
    store = open_store(redis_url, timeout_s=0.3)
    fast = store.fast
    assert fast is not None
    try:
        assert await fast.evalsha(echo_sha, ["k"], ["before"]) == b"before"
        await admin.client_pause(60_000, all=False)  # scripts wait; this client does not
        try:
            with pytest.raises(TimeoutError):
                await fast.evalsha(echo_sha, ["k"], ["late"])
            # Cancelled from outside, a call stays cancelled (it is not a timeout).
            call = asyncio.ensure_future(fast.evalsha(echo_sha, ["k"], ["cancelled"]))
            for _ in range(1000):  # loop turns until the call is sent and waits for Redis
                if any(link.waiting for link in fast._links.values()):
                    break
                await asyncio.sleep(0)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        finally:
            await admin.client_unpause()
        # The timed-out link was dropped: the late reply is not handed to the next caller.
        assert await fast.evalsha(echo_sha, ["k"], ["after"]) == b"after"
    finally:
        await store.close()


async def test_a_link_opened_after_its_callers_gave_up_leaves_no_stray_error() -> None:
    """The callers' deadline passes while the shared open still waits for the greeting;
    the open's own failure is then nobody's to read, and must not surface as
    "Task exception was never retrieved"."""
    from llm_router.state.multiplex import Address, Handshake, fixed

    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    stray: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: stray.append(context))
    fast = MultiplexedRedis(fixed(Address("127.0.0.1", port)), Handshake(), timeout_s=0.2)
    try:
        call = asyncio.ensure_future(fast.evalsha("0" * 40, ["k"], []))
        for _ in range(1000):  # loop turns until the shared open is under way
            if fast._opening:
                break
            await asyncio.sleep(0)
        opening = next(iter(fast._opening.values()))
        await asyncio.wait([call, opening])
        assert isinstance(call.exception(), TimeoutError)
        # Nothing else refers to the open now (its traceback held the frames that did).
        del call, opening
        gc.collect()
        assert stray == []
    finally:
        loop.set_exception_handler(None)
        await fast.close()
        silent.close()
