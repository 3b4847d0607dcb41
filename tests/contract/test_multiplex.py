"""The request path's shared Redis connection, on a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from llm_router.state.multiplex import MultiplexedRedis

ECHO = "return ARGV[1]"


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
    client = MultiplexedRedis(redis_url, timeout_s=2.0)
    yield client
    await client.close()


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
    client = MultiplexedRedis(url, timeout_s=2.0)
    sha = await admin.script_load("return redis.call('SET', KEYS[1], ARGV[1])")
    try:
        await client.evalsha(sha, ["{t}:db-check"], ["seven"])
    finally:
        await client.close()
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
    from llm_router.state.connect import open_store
    from llm_router.state.keys import Keys
    from llm_router.state.scripts import FleetScripts, Refused

    store = open_store(redis_url)
    try:
        assert store.fast is not None, "plain redis:// URLs use the shared connection"
        scripts = FleetScripts(store.redis, Keys("mx-flush"), store.fast)
        await admin.script_flush()  # as after a Redis restart or failover
        result = await scripts.acquire(
            model="nobody-has-it",
            lease_id="l",
            lease_ttl_ms=1000,
            ticket="t",
            queue_max=1,
            ticket_ttl_ms=1000,
            forget_ms=1000,
        )
        assert result == Refused("not_found")
    finally:
        await store.close()
