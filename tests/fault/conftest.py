"""Fault-injection tests: real routers, simulated nodes and redis-servers, faults injected
from outside (signals, killed processes, a node that never answers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fault.harness import RestartableRedis, restartable_redis


@pytest.fixture
def own_redis() -> Iterator[RestartableRedis]:
    """A redis-server of this test alone: it gets frozen, killed and restarted."""
    with restartable_redis() as server:
        yield server
