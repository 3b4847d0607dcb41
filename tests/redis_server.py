"""A throw-away ``redis-server`` for tests: free port, no persistence, always stopped.

The server runs in memory only (``--save '' --appendonly no``) from a private temporary
directory, so a test run leaves nothing behind and never touches another Redis on the
machine. A missing binary is an error, not a skip: the Redis half of the contract suite
is the point of the suite.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    import ports  # tests/ is on the path (pytest)
except ImportError:  # imported as tests.redis_server (the benchmarks)
    from tests import ports

START_TIMEOUT_S = 10.0


class RedisServerError(RuntimeError):
    """The test Redis could not be started; the message says what to do."""


def free_port() -> int:
    return ports.free_port()


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A running ``redis-server`` child process."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def log_tail(self, lines: int = 20) -> str:
        log = self.workdir / "redis.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _launch(binary: str, port: int, workdir: Path) -> RedisServer:
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--logfile", str(workdir / "redis.log"),
        "--databases", "16",
    ]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return RedisServer(port=port, process=process, workdir=workdir)


def start_redis_server(binary: str | None = None, attempts: int = 3) -> RedisServer:
    """Start a server and return once it answers PING.

    The port is picked free just before the start; another process may take it in between,
    so a server that dies at start-up is retried on a new port.
    """
    path = binary or shutil.which("redis-server")
    if path is None:
        raise RedisServerError(
            "redis-server was not found on PATH. The contract and integration tests run "
            "against a real Redis 7: install it (Debian/Ubuntu: apt-get install redis-server; "
            "macOS: brew install redis) and run the tests again."
        )
    last_error = ""
    for _ in range(attempts):
        workdir = Path(tempfile.mkdtemp(prefix="llmr-test-redis-"))
        server = _launch(path, free_port(), workdir)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                break
            if _ping(server.port):
                return server
            time.sleep(0.02)
        last_error = server.log_tail()
        server.stop()
    raise RedisServerError(f"redis-server did not answer PING; last log lines:\n{last_error}")


@contextlib.contextmanager
def running_redis_server(binary: str | None = None) -> Iterator[RedisServer]:
    server = start_redis_server(binary)
    try:
        yield server
    finally:
        server.stop()
