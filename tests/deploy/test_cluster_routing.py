"""The model-aware routing integration suite, run unchanged against a real 3-master Redis
Cluster: routers get ``redis+cluster://`` with two seed nodes, everything else is the same
(real router and simulated-node processes, the ``openai`` SDK as the client).

The suite's tests and fixtures (its module's and its directory's) are imported as they
are; only ``redis_url`` is overridden here, so the fleet they build lives on the Cluster.
"""

from __future__ import annotations

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from deploy.topologies import ClusterTopology
from integration.conftest import *  # noqa: F403  (the suite's fixtures)
from integration.test_routing import *  # noqa: F403  (the suite, collected here too)
from llm_router.state.keys import Keys


@pytest.fixture(scope="module")
def redis_url(redis_cluster: ClusterTopology) -> str:
    return redis_cluster.url


def test_the_fleet_state_lives_on_the_cluster(
    fleet: Fleet,  # noqa: F405
    redis_cluster: ClusterTopology,
) -> None:
    keys = Keys(fleet.cluster.key_prefix)
    assert fleet.cluster.redis_url == redis_cluster.url
    # Every key of the fleet shares one hash-tag slot, so one master holds all of them.
    slot = key_slot(keys.base.encode())
    counts = [int(m.client().cluster("COUNTKEYSINSLOT", slot)) for m in redis_cluster.masters]
    assert sorted(counts)[:-1] == [0, 0] and max(counts) > len(fleet.nodes)
    first = redis_cluster.masters[0]
    client = RedisCluster(host="127.0.0.1", port=first.port, decode_responses=True)
    try:
        assert client.zcard(keys.nodes_alive) == len(fleet.cluster.nodes_view()) >= 4
    finally:
        client.close()
