"""Credentials at the router's edge, through real router processes on a real Redis:
store passwords never shown, ambiguous keys refused on every endpoint, errors that do not
say which scope a key holds, and forged heartbeats that cost the fleet no script call."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from integration.conftest import open_cluster
from integration.procs import Router

pytestmark = pytest.mark.redis

API_KEY = "sk-edge-api"
ADMIN_KEY = "sk-edge-admin"


@pytest.fixture(scope="module")
def acl_user(redis_url: str) -> Iterator[tuple[str, str]]:
    """A Redis ACL user with a password, so each URL form really authenticates."""
    name, password = f"edge{secrets.token_hex(4)}", f"pw{secrets.token_hex(12)}"
    client = redis.Redis.from_url(redis_url)
    client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"],
                       channels=["*"], commands=["+@all"])  # fmt: skip
    try:
        yield name, password
    finally:
        client.acl_deluser(name)
        client.close()


def _credential_urls(redis_url: str, user: str, password: str) -> list[str]:
    where = urlsplit(redis_url).netloc
    return [
        f"redis://{user}:{password}@{where}/0",
        f"redis://{where}/0?username={user}&password={password}",
        f"redis://{user}@{where}/0?password={password}",
        # The default user has no password: any AUTH succeeds, and must not be shown.
        f"redis://:{password}@{where}/0",
    ]


@pytest.mark.parametrize("form", range(4))
def test_readyz_never_shows_a_store_credential(
    redis_url: str, acl_user: tuple[str, str], form: int
) -> None:
    user, password = acl_user
    url = _credential_urls(redis_url, user, password)[form]
    with open_cluster(url) as cluster:
        (router,) = cluster.up(log_level="info")
        ready = httpx.get(f"{router.url}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        assert password not in ready.text
        assert user not in ready.text
        assert "127.0.0.1" in ready.json()["store"]
        log = router.proc.log_path.read_text(errors="replace")
        assert f"state store: {ready.json()['store']}" in log  # the start-up banner
        assert password not in log


@pytest.fixture(scope="module")
def keyed_router(redis_url: str) -> Iterator[Router]:
    with open_cluster(redis_url) as cluster:
        (router,) = cluster.up(api_keys=[API_KEY], admin_keys=[ADMIN_KEY])
        yield router


BEARER = ("authorization", f"Bearer {API_KEY}")
AMBIGUOUS = [
    ("Authorization", [BEARER, ("authorization", "Bearer x")]),
    ("Authorization", [BEARER, BEARER]),
    ("X-API-Key", [("x-api-key", API_KEY), ("x-api-key", "other")]),
    ("X-API-Key", [BEARER, ("x-api-key", ADMIN_KEY)]),
]  # fmt: skip
ENDPOINTS = [
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v0/nodes"),
    ("POST", "/v0/nodes"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("param", "headers"), AMBIGUOUS)
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_ambiguous_credentials_are_refused_everywhere(
    keyed_router: Router, param: str, headers: list[tuple[str, str]], method: str, path: str
) -> None:
    response = httpx.request(
        method,
        keyed_router.url + path,
        headers=[*headers, ("content-type", "application/json")],
        content=b'{"model": "m", "messages": []}' if method == "POST" else None,
        timeout=5,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_one_key_in_both_headers_is_not_ambiguous(keyed_router: Router) -> None:
    response = httpx.get(
        f"{keyed_router.url}/v1/models",
        headers={"authorization": f"Bearer {API_KEY}", "x-api-key": API_KEY},
        timeout=5,
    )
    assert response.status_code == 200, response.text


def test_a_refusal_does_not_say_which_scope_the_key_holds(keyed_router: Router) -> None:
    response = httpx.get(
        f"{keyed_router.url}/v0/nodes", headers={"authorization": f"Bearer {API_KEY}"}, timeout=5
    )
    assert response.status_code == 403
    message = response.json()["error"]["message"]
    assert "'api'" not in message
    assert "admin" in message  # what the endpoint needs is no secret


def _heartbeat_calls(router: Router) -> int:
    text = httpx.get(f"{router.url}/metrics", timeout=5).text
    found = re.search(r'llm_router_redis_command_seconds_count\{command="heartbeat"\} (\S+)', text)
    return int(float(found.group(1))) if found else 0


def test_forged_heartbeats_cost_no_script_call(keyed_router: Router) -> None:
    before = _heartbeat_calls(keyed_router)
    forged = [
        ("not-a-node-id", "nt_" + "a" * 43, 404),
        (secrets.token_hex(8), "bogus", 401),
        ("0" * 16, "nt_short", 401),
    ]
    for node_id, token, status in forged:
        response = httpx.post(
            f"{keyed_router.url}/v0/health",
            json={"node_id": node_id, "cpu_usage": 1, "memory_usage": 1, "active_requests": 0},
            headers={"x-node-token": token},
            timeout=5,
        )
        assert response.status_code == status, response.text
    assert _heartbeat_calls(keyed_router) == before


def test_a_deeply_nested_heartbeat_is_a_400(keyed_router: Router) -> None:
    depth = 100_000
    body = b'{"node_id": ' + b"[" * depth + b"]" * depth + b"}"
    response = httpx.post(
        f"{keyed_router.url}/v0/health",
        content=body,
        headers={"x-node-token": "nt_" + "a" * 43, "content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert "nested" in response.json()["error"]["message"]


def test_a_non_ascii_settings_key_refuses_to_start() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llm_router.cli", "serve", "--api-keys", "sk-clé", "--port", "9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "api_keys" in done.stderr
    assert "printable ASCII" in done.stderr
