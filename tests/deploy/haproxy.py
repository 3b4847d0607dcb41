"""A real HAProxy in front of router replicas, configured as an operator would: round robin,
``/readyz`` health checks at short intervals, retries with redispatch to another replica
when a connection fails, and a stats socket to read per-replica counters.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from integration.procs import LOOPBACK, free_port

CONFIG = """\
global
    maxconn 2000
    stats socket {sock} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout check 1s
    # A request the dead replica never accepted (refused, reset before any response)
    # goes to another replica; one already answered in part cannot be replayed.
    retries 3
    retry-on conn-failure empty-response
    option redispatch 1

frontend routers_in
    bind {host}:{port}
    default_backend routers

backend routers
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 300ms fastinter 200ms downinter 500ms fall 2 rise 2
{servers}
"""


@dataclass
class HAProxy:
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "haproxy.sock"

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the routers backend: server name → its CSV row."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.socket_path))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "routers" and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)


def start_haproxy(backends: list[int], workdir: Path, timeout_s: float = 15.0) -> HAProxy:
    binary = shutil.which("haproxy")
    if binary is None:
        raise RuntimeError("haproxy was not found on PATH (Debian: apt-get install haproxy)")
    proxy = HAProxy(port=free_port(), workdir=workdir)
    servers = "\n".join(
        f"    server r{i} {LOOPBACK}:{port} check" for i, port in enumerate(backends, start=1)
    )
    config = workdir / "haproxy.cfg"
    config.write_text(
        CONFIG.format(sock=proxy.socket_path, host=LOOPBACK, port=proxy.port, servers=servers)
    )
    checked = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True)
    if checked.returncode != 0:
        raise RuntimeError(f"haproxy rejected its config: {checked.stderr.decode()}")
    log = (workdir / "haproxy.log").open("wb")
    try:
        proxy.process = subprocess.Popen(
            [binary, "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    finally:
        log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError):
            stats = proxy.stats()
            if len(stats) == len(backends) and all(row["status"] == "UP" for row in stats.values()):
                return proxy
        time.sleep(0.1)
    proxy.stop()
    raise RuntimeError(f"haproxy did not mark every replica UP within {timeout_s:g}s")
