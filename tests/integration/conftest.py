"""Process fixtures for the integration tests: real routers and simulated nodes on a real
redis-server, all on loopback ports picked at runtime.

``cluster`` is a fresh, empty fleet per test; a test module with a fixed topology builds a
module-scoped one with ``open_cluster``. Teardown kills every process group the cluster
started and prints their log tails (pytest shows them only when a test failed).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from integration.probes import SdkClients
from integration.procs import Cluster


@contextlib.contextmanager
def open_cluster(redis_url: str) -> Iterator[Cluster]:
    cluster = Cluster(redis_url)
    try:
        yield cluster
    finally:
        print(cluster.logs())
        cluster.close()


@pytest.fixture
def cluster(redis_url: str) -> Iterator[Cluster]:
    with open_cluster(redis_url) as opened:
        yield opened


@pytest.fixture
async def sdk() -> AsyncIterator[SdkClients]:
    clients = SdkClients()
    try:
        yield clients
    finally:
        await clients.close()
