"""Slow, idle, huge and numerous clients against a real ``llm-router serve`` process, on
raw sockets: the replica bounds what it holds for them before any request reaches auth."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from integration.conftest import open_cluster
from integration.procs import LOOPBACK, Router, wait_until

pytestmark = pytest.mark.redis

#: Far above every configured deadline: a connection still open after this was never cut.
STILL_OPEN_AFTER_S = 20.0

LIMITS = {
    "max_header_bytes": 16 * 1024,
    "header_timeout_s": 1.0,
    "body_timeout_s": 1.0,
    "keep_alive_timeout_s": 1,
    "max_connections": 8,
}


@pytest.fixture(scope="module")
def router(redis_url: str) -> Iterator[Router]:
    with open_cluster(redis_url) as cluster:
        (started,) = cluster.up(**LIMITS)
        yield started


def connect(router: Router) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, router.port), timeout=STILL_OPEN_AFTER_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; raises TimeoutError if it never does."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def healthz(router: Router) -> int:
    return httpx.get(f"{router.url}/healthz", timeout=10).status_code


def test_an_idle_connection_is_closed(router: Router) -> None:
    with connect(router) as sock:
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_a_partial_head_is_closed(router: Router) -> None:
    with connect(router) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_a_partial_body_is_closed(router: Router) -> None:
    with connect(router) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model":'
        )
        read_until_closed(sock)  # closed, whatever it says: nothing waits for the rest
    assert healthz(router) == 200


def test_a_kept_alive_connection_is_closed_when_idle(router: Router) -> None:
    with connect(router) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200")


def test_a_huge_header_is_refused_early_and_healthz_stays_up(router: Router) -> None:
    total = 64 * 1024 * 1024
    sent = 0
    answered: list[int] = []
    prober = threading.Thread(target=lambda: answered.append(healthz(router)))
    with connect(router) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        prober.start()
        chunk = b"a" * 65536
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
        reply = b""
        with contextlib.suppress(OSError):
            reply = read_until_closed(sock)
    # The server stopped reading long before 64 MiB: the socket broke under the sender.
    assert sent < total
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431")
    prober.join()
    assert answered == [200]


def test_a_head_just_under_the_bound_is_served(router: Router) -> None:
    filler = "a" * (LIMITS["max_header_bytes"] // 2)
    response = httpx.get(f"{router.url}/healthz", headers={"x-filler": filler}, timeout=10)
    assert response.status_code == 200


def test_connections_beyond_the_cap_are_turned_away_at_once(router: Router) -> None:
    held = [connect(router) for _ in range(LIMITS["max_connections"])]
    try:
        with connect(router) as extra:
            assert read_until_closed(extra).startswith(b"HTTP/1.1 503")
    finally:
        for sock in held:
            sock.close()

    def served() -> bool:
        try:
            return healthz(router) == 200
        except httpx.HTTPError:
            return False

    wait_until(served, 10, "the replica to take connections again once the crowd left")
