"""The request path's shared connection over TLS (``rediss://``), on a real redis-server
that requires client certificates, with a certificate authority made for the test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis.asyncio as aioredis

from contract.fleet import acquire_unknown_model
from llm_router.errors import StateStoreUnavailable
from llm_router.state.connect import StoreUrlError, open_store
from llm_router.state.scripts import AcquireResult, Refused
from redis_server import free_port
from tls_redis import TlsRedis, make_certificates, running_tls_redis

pytestmark = pytest.mark.redis

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    with running_tls_redis(free_port(), free_port()) as server:
        yield server


async def _acquire(url: str) -> AcquireResult:
    return await acquire_unknown_model(url, timeout_s=TIMEOUT_S)


async def test_calls_share_one_tls_connection_and_get_their_own_replies(
    tls_redis: TlsRedis,
) -> None:
    store = open_store(tls_redis.url(), timeout_s=TIMEOUT_S)
    admin = aioredis.Redis(port=tls_redis.plain_port)
    try:
        assert store.fast is not None, "rediss:// uses the shared connection"
        sha = await admin.script_load("return ARGV[1]")
        replies = await asyncio.gather(
            *(store.fast.evalsha(sha, ["{t}:k"], [i]) for i in range(50))
        )
        assert replies == [str(i).encode() for i in range(50)]
        links = [c for c in await admin.client_list() if c["cmd"] == "evalsha"]
        assert len(links) == 1, links
    finally:
        await admin.aclose()
        await store.close()


async def test_fleet_scripts_run_over_tls_with_a_client_certificate(tls_redis: TlsRedis) -> None:
    await aioredis.Redis(port=tls_redis.plain_port).script_flush()  # loaded through redis-py
    assert await _acquire(tls_redis.url()) == Refused("not_found")
    assert await _acquire(tls_redis.url()) == Refused("not_found")  # now on the shared link


@pytest.mark.parametrize("why", ["server certificate from another CA", "no client certificate"])
async def test_a_refused_tls_handshake_is_a_bounded_store_outage(
    tls_redis: TlsRedis, tmp_path: Path, why: str
) -> None:
    if why == "no client certificate":
        query = {"ssl_ca_certs": tls_redis.certs.path("ca.crt")}
        url = f"rediss://127.0.0.1:{tls_redis.tls_port}/0?{urlencode(query)}"
    else:
        url = tls_redis.url(ssl_ca_certs=make_certificates(tmp_path).path("ca.crt"))
    started = time.monotonic()
    with pytest.raises(StateStoreUnavailable):
        await _acquire(url)
    assert time.monotonic() - started < 3 * TIMEOUT_S


@pytest.mark.parametrize(
    ("query", "named"),
    [({"ssl_cert_reqs": "sometimes"}, "sometimes"), ({"ssl_colour": "blue"}, "ssl_colour")],
)
def test_bad_tls_options_are_refused_at_start_naming_the_option(
    tls_redis: TlsRedis, query: dict[str, str], named: str
) -> None:
    with pytest.raises(StoreUrlError, match=named):
        open_store(tls_redis.url(**query))
