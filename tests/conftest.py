"""Shared fixtures: a real redis-server for the session and the fleet state on top of it.

``store`` is parametrised over the embedded store (fakeredis) and the real server, so every
test that uses it (directly or through ``scripts`` / ``registry``) runs on both and the two
cannot drift apart. Each test gets its own key prefix, so tests share one server without
flushing it and a leftover key always names the test that made it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from llm_router.state.connect import Store, open_store
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, RegistryConfig
from llm_router.state.scripts import FleetScripts
from redis_server import RedisServer, start_redis_server

#: Generous enough that nothing expires by accident during a test; tests about expiry
#: build their own registry with short clocks.
DEFAULT_ALIVE_TTL_MS = 30_000
DEFAULT_FORGET_MS = 600_000
DEFAULT_MAX_CONCURRENCY = 4


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of the session's redis-server."""
    return redis_server.url


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(prefix=key_prefix)


@pytest.fixture(params=["fake", "real"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def store(store_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if store_kind == "real":
        url: str = request.getfixturevalue("redis_url")
        opened = open_store(url)
    else:
        opened = open_store(None)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def registry_config() -> RegistryConfig:
    return RegistryConfig(
        alive_ttl_ms=DEFAULT_ALIVE_TTL_MS,
        forget_ms=DEFAULT_FORGET_MS,
        default_max_concurrency=DEFAULT_MAX_CONCURRENCY,
    )


@pytest.fixture
def scripts(store: Store, keys: Keys) -> FleetScripts:
    return FleetScripts(store.redis, keys)


@pytest.fixture
def registry(
    store: Store, keys: Keys, scripts: FleetScripts, registry_config: RegistryConfig
) -> NodeRegistry:
    return NodeRegistry(store.redis, keys, scripts, registry_config)
