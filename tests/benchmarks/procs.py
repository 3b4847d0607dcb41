"""Child processes of the harness: started in their own process group, always stopped.

Every server runs in a new session so that stopping it reaches its whole tree (nginx
workers, LiteLLM workers). ``ProcessStack`` stops everything it started, newest first,
even when the harness is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class Unavailable(Exception):
    """A target cannot run on this machine; the report says why instead of crashing."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pin_prefix(cpus: str | None) -> list[str]:
    """``taskset -c CPUS`` when pinning is possible; taskset execs, so pids stay the same."""
    if cpus is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cpus]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: object = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """user+system CPU of every live process in this process's group."""
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                raw = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            # The command name may contain spaces; fields after it are fixed.
            fields = raw[raw.rindex(")") + 2 :].split()
            if int(fields[2]) == self.pid:  # pgrp
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / _CLK_TCK

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout_s)
        # The leader may be gone while its group lives on (forked workers).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout_s)
        close = getattr(self._log, "close", None)
        if close is not None:
            close()


class ProcessStack:
    """Owns the processes of one scope; ``close`` stops them newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("wb")
        full_env = {**os.environ, **(env or {})}
        popen = subprocess.Popen(
            [*pin_prefix(cpus), *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        proc = Proc(name, popen, log_path, log)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        while self._procs:
            self._procs.pop().stop()

    def __enter__(self) -> ProcessStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_port(proc: Proc, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise Unavailable(f"{proc.name} exited: {proc.log_tail(5)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise Unavailable(f"{proc.name} did not listen on port {port} within {timeout_s:.0f}s")


def wait_http_ok(
    proc: Proc,
    url: str,
    timeout_s: float,
    *,
    json_body: object = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Poll until ``url`` answers 2xx (POST when a body is given); the last error is reported."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise Unavailable(f"{proc.name} exited: {proc.log_tail(5)}")
            try:
                if json_body is None:
                    response = client.get(url, headers=headers)
                else:
                    response = client.post(url, json=json_body, headers=headers)
                if response.is_success:
                    return response
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
    raise Unavailable(f"{proc.name}: {url} not ready within {timeout_s:.0f}s ({last})")


@contextlib.contextmanager
def temp_dir(base: Path, name: str) -> Iterator[Path]:
    path = base / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    yield path
