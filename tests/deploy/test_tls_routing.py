"""Routers on TLS stores: ``rediss://``, ``rediss+sentinel://`` and ``rediss+cluster://``,
every server requiring client certificates from a certificate authority made for the test;
real router and simulated-node processes, the ``openai`` SDK as the client. Plus the URL
rules of TLS on every store scheme.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis
from redis.cluster import RedisCluster

from contract.fleet import acquire_unknown_model
from deploy.topologies import ClusterTopology, SentinelTopology
from integration.conftest import open_cluster
from integration.procs import Cluster, wait_until
from llm_router.errors import StateStoreUnavailable
from llm_router.state.connect import StoreUrlError, open_store
from llm_router.state.keys import Keys
from llm_router.state.multiplex import CLIENT_NAME
from redis_server import free_port
from tls_redis import TlsRedis, make_certificates, running_tls_redis

pytestmark = [pytest.mark.redis, pytest.mark.slow]

MODEL = "tls-gguf"
TIMEOUT_S = 1.0


def listening(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    with running_tls_redis(free_port(), free_port()) as server:
        yield server


@contextlib.contextmanager
def fleet_on(url: str) -> Iterator[Cluster]:
    with open_cluster(url) as cluster:
        cluster.up(routers=1)
        cluster.wait_online(cluster.start_node([MODEL], backend="cuda"))
        yield cluster


async def routes_over_one_tls_link(fleet: Cluster, home: redis.Redis, tls_port: int) -> None:
    """SDK requests succeed, the fleet lives on the server ``home`` probes (on its plain
    port), and the request path holds one connection there, made to its ``tls_port``."""
    [router] = fleet.routers
    client = openai.AsyncOpenAI(base_url=router.api_base, api_key="x", max_retries=0)
    for _ in range(5):
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.model == MODEL
    assert home.zcard(Keys(fleet.key_prefix).nodes_alive) == 1
    request_path = [c for c in home.client_list() if c["name"] == CLIENT_NAME]
    # Its last command was a script call: FCALL where the store has Functions, else EVALSHA.
    assert [c["cmd"] in ("fcall", "evalsha") for c in request_path] == [True], request_path
    assert [int(c["laddr"].rpartition(":")[2]) for c in request_path] == [tls_port]


async def test_requests_route_over_tls_on_one_shared_connection(tls_redis: TlsRedis) -> None:
    with fleet_on(tls_redis.url()) as fleet:
        await routes_over_one_tls_link(fleet, tls_redis.plain_client(), tls_redis.tls_port)


async def test_requests_route_through_sentinel_over_tls(
    redis_tls_sentinel: SentinelTopology,
) -> None:
    primary = redis_tls_sentinel.primary
    with fleet_on(redis_tls_sentinel.url) as fleet:
        await routes_over_one_tls_link(fleet, primary.client(), redis_tls_sentinel.served(primary))


async def test_requests_route_through_a_cluster_over_tls(
    redis_tls_cluster: ClusterTopology,
) -> None:
    with fleet_on(redis_tls_cluster.url) as fleet:
        probe = RedisCluster(host="127.0.0.1", port=redis_tls_cluster.masters[0].port)
        try:
            owner_port = probe.get_node_from_key(Keys(fleet.key_prefix).base).port
        finally:
            probe.close()
        owner = next(m for m in redis_tls_cluster.masters if m.port == owner_port)
        await routes_over_one_tls_link(fleet, owner.client(), redis_tls_cluster.served(owner))


def test_a_certificate_that_does_not_verify_is_a_clear_store_outage(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    other_ca = make_certificates(tmp_path).path("ca.crt")
    with open_cluster(tls_redis.url(ssl_ca_certs=other_ca)) as cluster:
        router = cluster.start_router(redis_socket_timeout_s=1.0)
        wait_until(lambda: listening(router.url), 30.0, "the router to listen")
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        response = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=10)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "state_store_unavailable"
        assert "Traceback" not in response.text
        assert httpx.get(f"{router.url}/readyz", timeout=10).status_code == 503


def test_an_unknown_tls_option_stops_the_router_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llm_router.cli", "serve", "--auth-disabled", "--port",
         str(free_port()), "--redis-url", "rediss://127.0.0.1:6380/0?ssl_colour=blue"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "ssl_colour" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["redis_tls_sentinel", "redis_tls_cluster"])
async def test_a_sentinel_or_cluster_certificate_that_does_not_verify_is_a_bounded_outage(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    topology: SentinelTopology | ClusterTopology = request.getfixturevalue(kind)
    url = topology.tls_url(make_certificates(tmp_path).path("ca.crt"))
    started = time.monotonic()
    with pytest.raises(StateStoreUnavailable):
        await acquire_unknown_model(url, timeout_s=TIMEOUT_S)
    assert time.monotonic() - started < 3 * TIMEOUT_S


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis+sentinel://127.0.0.1:26379/mymaster?ssl_ca_certs=/ca.crt", "rediss+sentinel://"),
        ("redis+cluster://127.0.0.1:7000?ssl_certfile=/c.crt", "rediss+cluster://"),
        ("rediss+cluster://127.0.0.1:7000?ssl_password=x", "ssl_password"),
        ("rediss+sentinel://127.0.0.1:26379/mymaster?ssl_cert_reqs=sometimes", "sometimes"),
        ("rediss+sentinel://127.0.0.1:26379/mymaster?ssl_colour=blue", "ssl_colour"),
    ],
)
def test_tls_options_on_sentinel_and_cluster_urls_are_checked_at_start(
    url: str, named: str
) -> None:
    with pytest.raises(StoreUrlError, match=re.escape(named)):
        open_store(url)
