"""Real router replicas and simulated nodes as child processes, for integration tests.

Every process runs in its own session (hence its own process group), logs to a file in a
private directory, and listens on a loopback port picked free at start. A ``Cluster`` owns
every process it starts and kills each one's group when it closes, so a failing test never
leaves a router or a node behind. Each cluster uses its own Redis key prefix: clusters
share one redis-server without seeing each other's fleet.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from llm_router.state.keys import Keys

try:
    import ports  # tests/ is on the path (pytest)
except ImportError:  # imported as tests.integration.procs (the benchmarks)
    from tests import ports

START_TIMEOUT_S = 20.0
LOOPBACK = "127.0.0.1"

#: Short clocks so that liveness, lease expiry and queue timeouts happen within a test.
FAST_ROUTER_FLAGS: dict[str, Any] = {
    "heartbeat_interval_s": 0.5,
    "node_timeout_s": 1.5,
    "lease_ttl_s": 2.0,
    "queue_ticket_ttl_s": 2.0,
}


port_is_free = ports.is_free
free_port = ports.free_port
free_port_pair = ports.free_port_pair


def _flags(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list | tuple):
            args += [flag, ",".join(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return args


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")


@dataclass
class Proc:
    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] = field(init=False)

    env: dict[str, str] | None = None

    def start(self) -> None:
        log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                self.args,
                env={**os.environ, **self.env} if self.env else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group: no graceful anything, as when a machine dies."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


@dataclass
class Router:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"


@dataclass
class SimNode:
    proc: Proc
    port: int
    machine_name: str
    models: list[str]

    @property
    def runtime_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port - 1}"


class Cluster:
    """Router replicas and simulated nodes on one Redis, under one fresh key prefix."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.key_prefix = f"it{uuid.uuid4().hex[:10]}"
        self.workdir = Path(tempfile.mkdtemp(prefix="llmr-it-"))
        self.routers: list[Router] = []
        self.nodes: list[SimNode] = []
        self._procs: list[Proc] = []
        self._names = 0

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        """``env`` is added to this process's environment for the child."""
        proc = Proc(name, [sys.executable, "-m", "llm_router.cli", *args], self.workdir / name)
        proc.env = env
        proc.start()
        self._procs.append(proc)
        return proc

    def start_router(self, env: dict[str, str] | None = None, **options: Any) -> Router:
        port = free_port()
        flags = {**FAST_ROUTER_FLAGS, **options}
        flags.update(
            port=port,
            redis_url=self.redis_url,
            key_prefix=self.key_prefix,
            auth_disabled=True,
            log_level=flags.get("log_level", "warning"),
        )
        router = Router(self._spawn(f"router-{port}.log", ["serve", *_flags(flags)], env), port)
        self.routers.append(router)
        return router

    def start_node(
        self,
        models: list[str],
        *,
        backend: str = "metal",
        machine_name: str | None = None,
        router: Router | None = None,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> SimNode:
        target = router or self.routers[0]
        port = free_port_pair()
        self._names += 1
        name = machine_name or f"sim{self._names}"
        flags: dict[str, Any] = {
            "heartbeat_interval_s": FAST_ROUTER_FLAGS["heartbeat_interval_s"],
            "ttft_ms": 5,
            "tokens_per_s": 2000,
            "register_retry_max_s": 0.5,
            "log_level": "warning",
            **options,
        }
        flags.update(
            router_url=target.url,
            gpu_backend=backend,
            models=models,
            port=port,
            machine_name=name,
        )
        proc = self._spawn(f"node-{name}.log", ["sim-node", *_flags(flags)], env)
        node = SimNode(proc, port, name, models)
        self.nodes.append(node)
        return node

    def start_runtime(self, models: list[str], **options: Any) -> int:
        """A simulated runtime alone (no agent): a test registers and heartbeats it itself.
        Returns its port."""
        port = free_port()
        flags = {"ttft_ms": 5, "tokens_per_s": 2000, **options, "port": port, "models": models}
        proc = Proc(
            f"runtime-{port}.log",
            [sys.executable, "-m", "llm_router.sim.standalone", *_flags(flags)],
            self.workdir / f"runtime-{port}.log",
        )
        proc.start()
        self._procs.append(proc)
        return port

    def start_agent(
        self, runtime_url: str, *, machine_name: str, router: Router | None = None, **options: Any
    ) -> SimNode:
        """The real node agent (``llm-router node``) in front of a runtime the test runs."""
        target = router or self.routers[0]
        port = free_port_pair()
        flags: dict[str, Any] = {
            "heartbeat_interval_s": FAST_ROUTER_FLAGS["heartbeat_interval_s"],
            "register_retry_max_s": 0.5,
            "gpu_backend": "cpu",
            "log_level": "warning",
            **options,
        }
        flags.update(
            router_url=target.url, runtime_url=runtime_url, port=port, machine_name=machine_name
        )
        proc = self._spawn(f"node-{machine_name}.log", ["node", *_flags(flags)])
        node = SimNode(proc, port, machine_name, [])
        self.nodes.append(node)
        return node

    def node_secret(self, node_id: str) -> str | None:
        """The secret the router presents to ``node_id``, read from Redis (as any Redis
        reader could): what a test needs to call a node directly, as its router does."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            raw = client.hget(Keys(self.key_prefix).node(node_id), "node_secret")
        finally:
            client.close()
        return raw.decode() if isinstance(raw, bytes) else None

    def read_logs(self) -> str:
        """Every line every process of this cluster has logged so far."""
        return "\n".join(p.log_path.read_text(errors="replace") for p in self._procs)

    # --- waiting --------------------------------------------------------------------------

    def wait_ready(self, router: Router, timeout_s: float = START_TIMEOUT_S) -> None:
        def ready() -> bool:
            if not router.proc.alive:
                raise RuntimeError(f"router exited:\n{router.proc.log_tail()}")
            try:
                return httpx.get(f"{router.url}/readyz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s, f"router on port {router.port} to be ready")

    def nodes_view(self, router: Router | None = None) -> list[dict[str, Any]]:
        target = router or self.routers[0]
        response = httpx.get(f"{target.url}/v0/nodes", timeout=2.0)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records

    def record_of(self, node: SimNode) -> dict[str, Any] | None:
        for record in self.nodes_view():
            if record.get("machine_name") == node.machine_name:
                return record
        return None

    def wait_online(self, node: SimNode, timeout_s: float = START_TIMEOUT_S) -> str:
        """Wait until ``node`` is registered and online; returns its node id."""
        found: dict[str, str] = {}

        def online() -> bool:
            if not node.proc.alive:
                raise RuntimeError(f"node {node.machine_name} exited:\n{node.proc.log_tail()}")
            record = self.record_of(node)
            if record is not None and record.get("status") == "online":
                found["id"] = str(record["id"])
                return True
            return False

        wait_until(online, timeout_s, f"node {node.machine_name} to come online")
        return found["id"]

    def wait_status(self, node: SimNode, status: str, timeout_s: float) -> None:
        def reached() -> bool:
            record = self.record_of(node)
            return record is not None and record.get("status") == status

        wait_until(reached, timeout_s, f"node {node.machine_name} to be {status}")

    def node_ids(self) -> dict[str, str]:
        """machine name → node id, for every node the fleet knows."""
        return {str(r["machine_name"]): str(r["id"]) for r in self.nodes_view()}

    def up(self, routers: int = 1, **router_options: Any) -> list[Router]:
        """Start ``routers`` replicas with the same options and wait until all are ready."""
        started = [self.start_router(**router_options) for _ in range(routers)]
        for router in started:
            self.wait_ready(router)
        return started

    def wait_all(self) -> dict[str, str]:
        """Wait for every router to be ready and every node online (processes start in
        parallel; a node retries registration until its router answers). Returns machine
        name → node id."""
        for router in self.routers:
            self.wait_ready(router)
        return {node.machine_name: self.wait_online(node) for node in self.nodes}

    def close(self) -> None:
        for proc in self._procs:
            proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in self._procs)
