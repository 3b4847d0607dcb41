"""What the node agent knows at run time, shared by its API and its heartbeat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from llm_router.gpu import GpuBackend, ModelSpec, list_executable_models
from llm_router.node.detect import GpuInfo
from llm_router.node.node_auth import NodeCredential
from llm_router.node.runtimes.base import RuntimeReport, RuntimeStatus

DEFAULT_MAX_CONCURRENCY = 4


@dataclass(frozen=True)
class Inventory:
    """Installed models and, for this backend, the executable ones (BRIEF §4)."""

    backend: GpuBackend
    specs: tuple[ModelSpec, ...] = ()
    executable: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "executable", tuple(list_executable_models(self.specs, self.backend))
        )

    @classmethod
    def build(cls, backend: GpuBackend, specs: Sequence[ModelSpec]) -> Inventory:
        return cls(backend=backend, specs=tuple(specs))

    @property
    def installed(self) -> list[str]:
        return [s.id for s in self.specs]

    def is_executable(self, model_id: str) -> bool:
        return model_id in self.executable


class NodeState:
    """Live counters of one node. ``active_requests`` covers a stream's whole life."""

    def __init__(self, gpu: GpuInfo, inventory: Inventory, machine_name: str) -> None:
        self.gpu = gpu
        self.inventory = inventory
        self.machine_name = machine_name
        self.started_at = int(time.time())
        # The last reading of the runtime (BRIEF §12); nothing is served until it is ready.
        self.runtime = RuntimeReport(RuntimeStatus.UNREACHABLE, "not read yet")
        self.runtime_kind = ""
        self.max_concurrency = DEFAULT_MAX_CONCURRENCY
        # "flag" (--max-concurrency), "runtime" (what it reported) or "default".
        self.max_concurrency_source = "default"
        self.active_requests = 0
        #: The router's secret for this node, set by each registration.
        self.credential = NodeCredential()
        self._idle = asyncio.Event()
        self._idle.set()
        # Exponentially weighted so the router sees recent latency, not the lifetime mean.
        self.average_response_time_ms: float | None = None

    @property
    def runtime_ready(self) -> bool:
        return self.runtime.status is RuntimeStatus.READY

    def begin(self) -> float:
        self.active_requests += 1
        self._idle.clear()
        return time.perf_counter()

    def end(self, started: float) -> None:
        self.active_requests -= 1
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        previous = self.average_response_time_ms
        self.average_response_time_ms = (
            elapsed_ms if previous is None else 0.8 * previous + 0.2 * elapsed_ms
        )
        if self.active_requests <= 0:
            self.active_requests = 0
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when no request is in flight (waiting at most ``timeout_s``)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
