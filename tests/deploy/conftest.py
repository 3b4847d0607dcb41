"""Fixtures for the deployment tests: real Redis Cluster and Sentinel topologies on
loopback, plain and TLS, each killed at the end (their log tails are printed, which pytest
shows only for failures). The clusters last the session; each Sentinel test gets a fresh
set, since the failover tests change who leads.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.topologies import (
    ClusterTopology,
    SentinelTopology,
    opened,
    start_cluster,
    start_sentinel,
)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterTopology]:
    with opened(start_cluster()) as topology:
        yield topology


@pytest.fixture(scope="session")
def redis_tls_cluster() -> Iterator[ClusterTopology]:
    """Three masters whose clients and cluster bus speak TLS with client certificates."""
    with opened(start_cluster(tls=True)) as topology:
        yield topology


@pytest.fixture
def redis_sentinel() -> Iterator[SentinelTopology]:
    """A fresh primary + replica + sentinel: the failover test kills the primary."""
    with opened(start_sentinel()) as topology:
        yield topology


@pytest.fixture
def redis_tls_sentinel() -> Iterator[SentinelTopology]:
    """The same set with every link TLS and client certificates required."""
    with opened(start_sentinel(tls=True)) as topology:
        yield topology
