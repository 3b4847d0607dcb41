"""Loopback ports for the processes a test starts.

A port is chosen here and bound by another process a moment later. Asking the kernel for
port 0 hands out a port from its ephemeral range, the same range every outgoing connection
(aiohttp, redis-py, httpx: hundreds of them in a run) takes its local port from, so in that
moment an outgoing connection can take the port and the server fails with "address already
in use". Ports are therefore drawn below the ephemeral range, and never twice in one run.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
_handed_out: set[int] = set()
_draw = random.Random()


def _below_ephemeral() -> tuple[int, int] | None:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # the Linux default
    return (10_000, low - 1) if low > 12_000 else None


def is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback port nobody listens on, not handed out before in this process."""
    span = _below_ephemeral()
    for _ in range(1000):
        if span is not None:
            port = _draw.randint(*span)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port = int(sock.getsockname()[1])
        if port not in _handed_out and is_free(port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port")


def free_port_pair() -> int:
    """A port P with P-1 free too (a simulated node listens on both)."""
    for _ in range(200):
        port = free_port()
        if port > 1025 and port - 1 not in _handed_out and is_free(port - 1):
            _handed_out.add(port - 1)
            return port
    raise RuntimeError("no free pair of adjacent loopback ports")
