"""Routers on ``rediss://``: a redis-server that requires client certificates, with a
certificate authority made for the test; real router and simulated-node processes, the
``openai`` SDK as the client.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from integration.conftest import open_cluster
from integration.procs import Cluster, wait_until
from llm_router.state.keys import Keys
from llm_router.state.multiplex import CLIENT_NAME
from redis_server import free_port
from tls_redis import TlsRedis, make_certificates, running_tls_redis

pytestmark = [pytest.mark.redis, pytest.mark.slow]

MODEL = "tls-gguf"


def listening(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    with running_tls_redis(free_port(), free_port()) as server:
        yield server


@pytest.fixture
def fleet(tls_redis: TlsRedis) -> Iterator[Cluster]:
    with open_cluster(tls_redis.url()) as cluster:
        cluster.up(routers=1)
        cluster.wait_online(cluster.start_node([MODEL], backend="cuda"))
        yield cluster


async def test_requests_route_over_tls_on_one_shared_connection(
    fleet: Cluster, tls_redis: TlsRedis
) -> None:
    [router] = fleet.routers
    client = openai.AsyncOpenAI(base_url=router.api_base, api_key="x", max_retries=0)
    for _ in range(5):
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.model == MODEL
    # The fleet lives on the TLS server, and the request path used one connection to it.
    plain = tls_redis.plain_client()
    assert plain.zcard(Keys(fleet.key_prefix).nodes_alive) == 1
    request_path = [c for c in plain.client_list() if c["name"] == CLIENT_NAME]
    assert [c["cmd"] for c in request_path] == ["evalsha"], request_path


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
