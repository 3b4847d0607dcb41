"""The agent's runtime monitor: capacity choice, what a heartbeat says, and its log lines."""

from __future__ import annotations

import logging

import httpx
import pytest

from llm_router.gpu import GpuBackend, ModelSpec
from llm_router.node.detect import GpuInfo
from llm_router.node.heartbeat import heartbeat_body, register_body
from llm_router.node.load import LoadSampler
from llm_router.node.monitor import RuntimeMonitor, capacity_choice
from llm_router.node.runtimes import RuntimeHttp, RuntimeKind, make_adapter
from llm_router.node.settings import NodeSettings
from llm_router.node.state import Inventory, NodeState
from llm_router.protocol import HeartbeatRequest, RegisterRequest


class FakeRuntime:
    """A llama.cpp-shaped runtime whose answers a test changes between readings."""

    def __init__(self) -> None:
        self.status = 200
        self.slots = 2
        self.models = ["a.gguf", "b-mlx"]

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "no"}})
        path = request.url.path
        if path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": m} for m in self.models]})
        if path == "/props":
            return httpx.Response(200, json={"total_slots": self.slots, "build_info": "b1-x"})
        return httpx.Response(404)


def monitor_for(fake: FakeRuntime, flag: int | None = None) -> tuple[RuntimeMonitor, NodeState]:
    state = NodeState(GpuInfo(backend=GpuBackend.CUDA), Inventory.build(GpuBackend.CUDA, []), "n")
    client = httpx.AsyncClient(transport=httpx.MockTransport(fake.handle))
    monitor = RuntimeMonitor(
        state,
        make_adapter(RuntimeKind.AUTO),
        RuntimeHttp(client, "http://rt", None),
        [ModelSpec("from-catalog")],
        max_concurrency=flag,
    )
    return monitor, state


def test_capacity_choice() -> None:
    assert capacity_choice(8, 2) == (8, "flag")
    assert capacity_choice(None, 2) == (2, "runtime")
    assert capacity_choice(None, None) == (4, "default")


async def test_ready_runtime_fills_the_heartbeat() -> None:
    monitor, state = monitor_for(FakeRuntime())
    await monitor.refresh()
    body = heartbeat_body("id1", state, LoadSampler(), None)
    HeartbeatRequest.model_validate(body)
    assert body["runtime_status"] == "ready"
    assert body["runtime_kind"] == "llamacpp"
    assert body["runtime_version"] == "b1-x"
    # b-mlx is installed but not executable on CUDA; the catalog entry is installed too.
    assert body["executable_models"] == ["a.gguf", "from-catalog"]
    assert body["loaded_models"] == ["a.gguf"]
    assert (body["max_concurrency"], body["max_concurrency_source"]) == (2, "runtime")


async def test_flag_overrides_the_runtimes_capacity() -> None:
    monitor, state = monitor_for(FakeRuntime(), flag=7)
    await monitor.refresh()
    body = heartbeat_body("id1", state, LoadSampler(), None)
    assert (body["max_concurrency"], body["max_concurrency_source"]) == (7, "flag")


@pytest.mark.parametrize(
    ("code", "status"), [(401, "unauthorized"), (503, "loading"), (500, "unreachable")]
)
async def test_a_runtime_that_is_not_ready_advertises_nothing(code: int, status: str) -> None:
    fake = FakeRuntime()
    monitor, state = monitor_for(fake)
    await monitor.refresh()
    fake.status = code
    await monitor.refresh()
    body = heartbeat_body("id1", state, LoadSampler(), None)
    assert body["runtime_status"] == status
    assert body["executable_models"] == [] and body["loaded_models"] == []
    settings = NodeSettings(router_url="http://r", runtime_url="http://rt")
    registration = register_body(settings, state)
    RegisterRequest.model_validate(registration)
    assert registration["executable_models"] == []
    assert registration["runtime_status"] == status


async def test_unauthorized_is_an_error_naming_the_flag(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeRuntime()
    fake.status = 401
    monitor, _ = monitor_for(fake)
    with caplog.at_level(logging.DEBUG, logger="llm_router.node"):
        await monitor.refresh()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "--runtime-api-key" in errors[0].getMessage()


async def test_one_info_line_per_change_debug_otherwise(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeRuntime()
    monitor, _ = monitor_for(fake)
    with caplog.at_level(logging.DEBUG, logger="llm_router.node"):
        for _ in range(3):
            await monitor.refresh()
        fake.slots = 4
        await monitor.refresh()
        await monitor.refresh()
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(loud) == 2, [r.getMessage() for r in loud]
    assert "max_concurrency 4" in loud[1].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 5


async def test_a_hung_runtime_is_unreachable_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from llm_router.node import monitor as monitor_module

    release = asyncio.Event()

    async def hang(_request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200)

    monkeypatch.setattr(monitor_module, "READ_BUDGET_S", 0.05)
    state = NodeState(GpuInfo(backend=GpuBackend.CPU), Inventory.build(GpuBackend.CPU, []), "n")
    client = httpx.AsyncClient(transport=httpx.MockTransport(hang))
    monitor = RuntimeMonitor(
        state, make_adapter(RuntimeKind.VLLM), RuntimeHttp(client, "http://rt", None)
    )
    report = await monitor.refresh()
    release.set()
    assert report.status.value == "unreachable"
    assert "did not answer" in report.detail
