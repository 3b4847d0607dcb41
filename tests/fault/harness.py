"""Process-level fault injection: a redis-server that can be frozen, killed and brought
back empty on the same port, a node that accepts connections and never answers, and
direct reads of a fleet's Redis keys.

Everything listens on loopback ports picked at runtime; every process is stopped by the
fixture that started it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from llm_router.state.keys import Keys
from redis_server import free_port


@dataclass
class RestartableRedis:
    """A redis-server on a fixed port that tests may freeze, kill and restart (empty)."""

    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="llmr-fault-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.process = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--logfile", str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, like a hung server."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=5)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def restartable_redis() -> Iterator[RestartableRedis]:
    server = RestartableRedis()
    server.start()
    try:
        yield server
    finally:
        server.close()


class BlackHoleNode:
    """A listening socket that completes TCP handshakes (the kernel does) and never reads
    or answers: a node whose runtime hangs. Registered and kept alive by heartbeats."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.node_id = ""
        self.token = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, router_url: str, models: list[str], **fields: Any) -> str:
        body = {
            "machine_name": f"blackhole-{self.port}",
            "ip_address": "127.0.0.1",
            "runtime_port": self.port - 1,
            "node_api_port": self.port,
            "gpu_backend": "cuda",
            "executable_models": models,
            **fields,
        }
        response = httpx.post(f"{router_url}/v0/nodes", json=body, timeout=5)
        response.raise_for_status()
        self.node_id, self.token = response.json()["node_id"], response.json()["node_token"]
        return self.node_id

    def keep_alive(self, router_url: str, interval_s: float, **fields: Any) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                with contextlib.suppress(httpx.HTTPError):
                    httpx.post(
                        f"{router_url}/v0/health",
                        json={"node_id": self.node_id, "cpu_usage": 0, "memory_usage": 0,
                              "active_requests": 0, **fields},
                        headers={"X-Node-Token": self.token},
                        timeout=2,
                    )  # fmt: skip

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sock.close()


def fleet_counts(client: redis.Redis, prefix: str) -> dict[str, int]:
    """Live leases and queue tickets of a fleet, straight from Redis (what would leak)."""
    keys = Keys(prefix)
    now_ms = int(client.time()[0]) * 1000
    counts = {"leases": 0, "tickets": 0}
    for key in client.scan_iter(match=keys.leases("*")):
        counts["leases"] += int(client.zcount(key, now_ms, "+inf"))
    # A ticket is live while its waiter renews it; a dead one is pruned by the next acquire.
    for key in client.scan_iter(match=keys.queue_alive("*")):
        counts["tickets"] += int(client.zcount(key, now_ms, "+inf"))
    return counts


def queue_members(client: redis.Redis, prefix: str) -> int:
    """Every ticket in every queue, dead or alive."""
    keys = Keys(prefix)
    alive = {k for k in client.scan_iter(match=keys.queue_alive("*"))}
    queues = [k for k in client.scan_iter(match=keys.queue("*")) if k not in alive]
    return sum(int(client.zcard(k)) for k in queues)


def lease_members(client: redis.Redis, prefix: str) -> int:
    """Every lease entry, expired or not (an expired one is pruned lazily)."""
    return sum(int(client.zcard(k)) for k in client.scan_iter(match=Keys(prefix).leases("*")))


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
