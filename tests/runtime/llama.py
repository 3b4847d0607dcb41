"""Real ``llama-server`` processes and real node agents beside them, for the runtime suite.

``LlamaServer`` runs one server on a free loopback port (its own process group, its log in
a file) and can be SIGKILLed and started again on the same port, as a crashed runtime
restarted by its supervisor would be. ``RuntimeFleet`` adds ``llm-router node`` agents in
front of such servers to the integration suite's ``Cluster`` (routers on a real Redis).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from integration.procs import LOOPBACK, Cluster, Proc, SimNode, _flags, free_port, wait_until

LLAMA_START_TIMEOUT_S = 60.0
AGENT_HEARTBEAT_S = 0.5


@dataclass
class LlamaServer:
    binary: Path
    args: list[str]
    workdir: Path
    port: int = field(default_factory=free_port)
    api_key: str | None = None
    proc: Proc | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> LlamaServer:
        self.starts += 1
        argv = [str(self.binary), "--host", LOOPBACK, "--port", str(self.port), *self.args]
        if self.api_key:
            argv += ["--api-key", self.api_key]
        name = f"llama-{self.port}-{self.starts}.log"
        self.proc = Proc(name, argv, self.workdir / name)
        self.proc.start()
        return self

    def wait_healthy(self, timeout_s: float = LLAMA_START_TIMEOUT_S) -> LlamaServer:
        def healthy() -> bool:
            assert self.proc is not None
            if not self.proc.alive:
                raise RuntimeError(f"llama-server exited:\n{self.proc.log_tail()}")
            try:
                return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout_s, f"llama-server on port {self.port}", interval_s=0.1)
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def log_tail(self) -> str:
        return self.proc.log_tail() if self.proc else ""


class RuntimeFleet(Cluster):
    """Routers and simulated nodes as in the integration suite, plus real agents."""

    def start_agent(self, runtime: LlamaServer, *, machine_name: str, **options: Any) -> SimNode:
        port = free_port()
        flags: dict[str, Any] = {
            "heartbeat_interval_s": AGENT_HEARTBEAT_S,
            "register_retry_max_s": 0.5,
            "gpu_backend": "cpu",
            "log_level": "info",
            **options,
        }
        flags.update(
            router_url=self.routers[0].url,
            runtime_url=runtime.url,
            port=port,
            machine_name=machine_name,
        )
        proc = self._spawn(f"agent-{machine_name}.log", ["node", *_flags(flags)])
        node = SimNode(proc, port, machine_name, [])
        self.nodes.append(node)
        return node

    def record(self, node: SimNode) -> dict[str, Any]:
        record = self.record_of(node)
        assert record is not None, f"{node.machine_name} is not registered"
        return record

    def wait_record(
        self, node: SimNode, timeout_s: float = 30.0, **expected: Any
    ) -> dict[str, Any]:
        """Wait until the node's record has every ``expected`` field value."""
        found: dict[str, Any] = {}

        def matches() -> bool:
            if not node.proc.alive:
                raise RuntimeError(f"agent exited:\n{node.proc.log_tail()}")
            record = self.record_of(node)
            if record is not None and all(record.get(k) == v for k, v in expected.items()):
                found.update(record)
                return True
            return False

        wait_until(matches, timeout_s, f"{node.machine_name} to show {expected}", interval_s=0.05)
        return found

    def heartbeats_after(self, node: SimNode, count: int, timeout_s: float = 30.0) -> None:
        """Wait until ``count`` more heartbeats of ``node`` have landed (last_seen moves)."""
        seen = {self.record(node).get("last_seen")}
        deadline = time.monotonic() + timeout_s
        while len(seen) <= count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.machine_name} sent fewer than {count} heartbeats")
            seen.add(self.record(node).get("last_seen"))
            time.sleep(0.02)

    def listed_models(self) -> list[str]:
        response = httpx.get(f"{self.routers[0].url}/v1/models", timeout=5.0)
        response.raise_for_status()
        return [entry["id"] for entry in response.json()["data"]]
