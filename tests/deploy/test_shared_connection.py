"""The request path's shared connection on the production store kinds, against real
topologies: a 3-master Cluster (redirections and a slot migration while calls flow) and a
Sentinel set (a manual failover and a frozen primary).

Calls go through the connection the router opens from its store URL (``Store.fast``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from deploy.topologies import ClusterTopology, SentinelTopology, Server
from integration.procs import wait_until
from llm_router.state.connect import open_store
from llm_router.state.multiplex import CLIENT_NAME, MultiplexedRedis
from llm_router.state.scripts import STORE_DOWN_ERRORS

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SET = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"
TIMEOUT_S = 1.0
#: A call during a switch must end within this (one socket timeout plus slack).
CALL_BOUND_S = 3 * TIMEOUT_S


@contextlib.asynccontextmanager
async def shared(url: str) -> AsyncIterator[MultiplexedRedis]:
    store = open_store(url, timeout_s=TIMEOUT_S)
    try:
        assert store.fast is not None, f"{url} has no shared connection"
        yield store.fast
    finally:
        await store.close()


def load(servers: list[Server]) -> str:
    shas = {s.client().script_load(SET) for s in servers}
    (sha,) = shas
    return str(sha)


def links(server: Server) -> int:
    """The request path's connections to ``server``."""
    return sum(c["name"] == CLIENT_NAME for c in server.client().client_list())


def has_link(server: Server) -> bool:
    return links(server) > 0


async def in_step(fast: MultiplexedRedis, sha: str, key: str, label: str) -> None:
    """Concurrent calls, each of which must get its own reply."""
    values = [f"{label}-{i}" for i in range(20)]
    replies = await asyncio.gather(*(fast.evalsha(sha, [key], [v]) for v in values))
    assert replies == [v.encode() for v in values]


# --- Cluster ------------------------------------------------------------------------------


def _owner(cluster: ClusterTopology, key: str) -> Server:
    client = RedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
    try:
        port = client.get_node_from_key(key).port
    finally:
        client.close()
    return next(m for m in cluster.masters if m.port == port)


def _tag_on(cluster: ClusterTopology, server: Server) -> str:
    """A hash tag whose slot lives on ``server``."""
    for i in range(10_000):
        tag = f"{{mx{os.getpid()}-{i}}}"
        if _owner(cluster, tag) is server:
            return tag
    raise AssertionError("no hash tag found on the wanted master")


async def test_cluster_calls_follow_moved_to_the_slot_owner_outside_the_seeds(
    redis_cluster: ClusterTopology,
) -> None:
    not_a_seed = redis_cluster.masters[2]
    assert f":{not_a_seed.port}" not in redis_cluster.url
    tag = _tag_on(redis_cluster, not_a_seed)
    sha = load(redis_cluster.masters)
    async with shared(redis_cluster.url) as fast:
        await in_step(fast, sha, f"{tag}:k", "first")
        assert str(not_a_seed.client().get(f"{tag}:k")).startswith("first-")
        # Twenty callers redirected at once share one new link.
        assert links(not_a_seed) == 1


async def test_cluster_calls_keep_working_while_the_slot_migrates(
    redis_cluster: ClusterTopology,
) -> None:
    source, target = redis_cluster.masters[0], redis_cluster.masters[1]
    tag = _tag_on(redis_cluster, source)
    slot = int(source.client().cluster("KEYSLOT", tag))
    source_id, target_id = source.client().cluster("MYID"), target.client().cluster("MYID")
    sha = load(redis_cluster.masters)
    old, new = f"{tag}:old", f"{tag}:new"
    async with shared(redis_cluster.url) as fast:
        await in_step(fast, sha, old, "before")
        assert has_link(source)

        target.client().cluster("SETSLOT", slot, "IMPORTING", source_id)
        source.client().cluster("SETSLOT", slot, "MIGRATING", target_id)
        # A key still on the source runs there; a key it no longer has is asked of the target.
        await in_step(fast, sha, old, "migrating")
        await in_step(fast, sha, new, "asked")
        assert str(source.client().get(old)).startswith("migrating-")
        assert str(asked(target, new)).startswith("asked-")

        keys = source.client().cluster("GETKEYSINSLOT", slot, 100)
        source.client().migrate("127.0.0.1", target.port, keys, 0, 5000)
        await in_step(fast, sha, old, "moved-keys")  # ASK again: the source lost it
        for master in redis_cluster.masters:
            master.client().cluster("SETSLOT", slot, "NODE", target_id)

        # The migration is over: MOVED points the link at the new owner for good.
        await in_step(fast, sha, old, "after")
        assert _owner(redis_cluster, old) is target
        assert str(target.client().get(old)).startswith("after-")
        assert str(target.client().get(new)).startswith("asked-")
        assert has_link(target)
        wait_until(lambda: not has_link(source), 5.0, "the link to the old owner to close")


def asked(server: Server, key: str) -> Any:
    """GET on a node importing the key's slot (it answers only after ASKING)."""
    pipe = server.client().pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.get(key)
    return pipe.execute()[1]


# --- Sentinel -----------------------------------------------------------------------------


async def _until_served(call: Callable[[], Awaitable[Any]], bound_s: float) -> list[str]:
    """Call until one succeeds; every failure must be a store outage, each one bounded."""
    failures: list[str] = []
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            await call()
            return failures
        except STORE_DOWN_ERRORS as exc:
            assert time.monotonic() - started < CALL_BOUND_S, exc
            failures.append(type(exc).__name__)
            await asyncio.sleep(0.05)
    raise AssertionError(f"not served within {bound_s}s: {failures}")


async def lands_on(fast: MultiplexedRedis, sha: str, server: Server, label: str) -> None:
    """Concurrent writes in step, and the last one on ``server``: else still elsewhere."""
    await in_step(fast, sha, "{s}:k", label)
    if not str(server.client().get("{s}:k")).startswith(f"{label}-"):
        raise ConnectionError(f"the calls did not reach port {server.port} yet")


def _ask_failover(topology: SentinelTopology) -> bool:
    """Ask for a manual failover; False while the sentinel knows no replica fit to promote
    (its view of a fresh replica's link lags by up to a few seconds)."""
    try:
        topology.sentinel.client().sentinel_failover(topology.service)
    except ResponseError as exc:
        if "NOGOODSLAVE" not in str(exc):
            raise
        return False
    return True


def link_ports(server: Server) -> list[int]:
    """The ports the request path's connections to ``server`` arrived on."""
    clients = server.client().client_list()
    return [int(c["laddr"].rpartition(":")[2]) for c in clients if c["name"] == CLIENT_NAME]


async def follows_a_manual_failover(topology: SentinelTopology) -> None:
    sha = load(topology.servers[:2])
    old, new = topology.primary, topology.replica
    async with shared(topology.url) as fast:
        await in_step(fast, sha, "{s}:k", "before")
        assert link_ports(old) == [topology.served(old)]
        wait_until(
            lambda: _ask_failover(topology), 20.0, "a replica fit to promote", interval_s=0.5
        )
        wait_until(
            lambda: topology.current_primary_port() != topology.served(old), 20.0, "the promotion"
        )
        wait_until(lambda: new.client().role()[0] == "master", 20.0, "the replica to lead")

        failures = await _until_served(lambda: lands_on(fast, sha, new, "after"), 20.0)
        print(f"manual failover: calls failed before the new primary: {Counter(failures)}")
        assert link_ports(new) == [topology.served(new)]
        assert old.process.poll() is None, "the old primary stayed up throughout"


async def test_sentinel_calls_follow_a_manual_failover(redis_sentinel: SentinelTopology) -> None:
    await follows_a_manual_failover(redis_sentinel)


async def test_sentinel_over_tls_calls_follow_a_manual_failover(
    redis_tls_sentinel: SentinelTopology,
) -> None:
    await follows_a_manual_failover(redis_tls_sentinel)


async def test_sentinel_frozen_primary_gives_bounded_failures_then_the_new_primary(
    redis_sentinel: SentinelTopology,
) -> None:
    sha = load(redis_sentinel.servers[:2])
    frozen = redis_sentinel.primary
    async with shared(redis_sentinel.url) as fast:
        await in_step(fast, sha, "{s}:k", "before")
        os.killpg(frozen.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(STORE_DOWN_ERRORS):
                await fast.evalsha(sha, ["{s}:k"], ["frozen"])
            assert time.monotonic() - started < CALL_BOUND_S

            new = redis_sentinel.replica

            failures = await _until_served(lambda: lands_on(fast, sha, new, "promoted"), 30.0)
            print(f"frozen primary: calls failed before the promoted one: {Counter(failures)}")
        finally:
            os.killpg(frozen.process.pid, signal.SIGCONT)
