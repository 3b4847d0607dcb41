"""Fixtures for the deployment tests: real Redis Cluster and Sentinel topologies on
loopback, started once per session and killed at the end (their log tails are printed,
which pytest shows only for failures).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.topologies import ClusterTopology, SentinelTopology, start_cluster, start_sentinel


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterTopology]:
    topology = start_cluster()
    try:
        yield topology
    finally:
        print(topology.logs())
        topology.close()


@pytest.fixture
def redis_sentinel() -> Iterator[SentinelTopology]:
    """A fresh primary + replica + sentinel: the failover test kills the primary."""
    topology = start_sentinel()
    try:
        yield topology
    finally:
        print(topology.logs())
        topology.close()
