"""Secure by default, through the real ``llm-router`` command: a router on a shared Redis
with the node or admin scope open refuses to start; an explicit opt-out starts, warns, and
says so on /readyz; keys created with ``llm-router keys`` close the scopes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llm_router.state.keys import Keys
from redis_server import free_port

CLI = [sys.executable, "-m", "llm_router.cli"]


def run_cli(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.fixture
def prefix() -> str:
    return Keys(f"sec{time.monotonic_ns()}").prefix


def test_a_router_on_redis_with_open_scopes_refuses_to_start(redis_url: str, prefix: str) -> None:
    result = run_cli("serve", "--redis-url", redis_url, "--key-prefix", prefix, "--port", "1")
    assert result.returncode == 2, result
    assert "refusing to start" in result.stderr
    assert "node, admin" in result.stderr and "LLM_ROUTER_AUTH_DISABLED" in result.stderr


def test_node_keys_alone_are_not_enough(redis_url: str, prefix: str) -> None:
    result = run_cli("serve", "--redis-url", redis_url, "--key-prefix", prefix, "--node-keys", "k1")
    assert result.returncode == 2 and "scope(s) admin " in result.stderr


@pytest.fixture
def serve(redis_url: str, prefix: str) -> Iterator[Any]:
    started: list[subprocess.Popen[str]] = []

    def start(*extra: str) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        args = ["serve", "--redis-url", redis_url, "--key-prefix", prefix, "--port", str(port)]
        proc = subprocess.Popen(
            [*CLI, *args, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("router did not become ready")

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def test_an_explicit_opt_out_starts_warns_and_shows_on_readyz(serve: Any) -> None:
    proc, url = serve("--auth-disabled")
    ready = httpx.get(f"{url}/readyz", timeout=5).json()
    assert "authentication is disabled" in ready["warning"]
    proc.terminate()
    output, _ = proc.communicate(timeout=10)
    assert "AUTHENTICATION IS DISABLED" in output


def test_keys_created_in_redis_close_the_scopes(redis_url: str, prefix: str, serve: Any) -> None:
    common = ("keys", "--redis-url", redis_url, "--key-prefix", prefix)
    admin = run_cli(*common, "create", "--scope", "admin", "--name", "ops")
    node = run_cli(*common, "create", "--scope", "node")
    assert admin.returncode == 0 and node.returncode == 0, (admin, node)
    admin_key = admin.stdout.strip()
    listed = run_cli(*common, "list")
    assert admin_key not in listed.stdout and "ops" in listed.stdout
    # Rows are ordered by creation second, then id: find the admin key by its name.
    (key_id,) = [row.split()[0] for row in listed.stdout.splitlines()[1:] if row.endswith(" ops")]

    _, url = serve("--key-refresh-s", "0.5")
    assert httpx.get(f"{url}/v0/nodes", timeout=5).status_code == 401
    auth = {"authorization": f"Bearer {admin_key}"}
    assert httpx.get(f"{url}/v0/nodes", headers=auth, timeout=5).status_code == 200
    assert httpx.get(f"{url}/readyz", timeout=5).json().get("warning") is None

    revoked = run_cli(*common, "revoke", key_id)
    assert revoked.returncode == 0, revoked
    # Revocation reaches the replica within its refresh period.
    deadline = time.monotonic() + 5
    while httpx.get(f"{url}/v0/nodes", headers=auth, timeout=5).status_code == 200:
        assert time.monotonic() < deadline, "revoked key still accepted"
        time.sleep(0.1)
    assert run_cli(*common, "revoke", key_id).returncode == 1


def test_keys_need_a_shared_store() -> None:
    result = run_cli("keys", "list")
    assert result.returncode == 2 and "LLM_ROUTER_REDIS_URL" in result.stderr
