"""``llm-router fleet`` against a real redis-server.

The fleet state is made with the same registry and scripts the routers use (registrations,
leases, queue tickets), then read back through the command's ``main`` with its output
captured; one test runs the installed CLI as a separate process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llm_router import fleetctl
from llm_router.gpu import GpuBackend
from llm_router.protocol import RegisterRequest
from llm_router.state.connect import Store, open_store
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, RegistryConfig
from llm_router.state.scripts import FleetScripts, Granted, Queued
from redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis

LONG_MS = 60_000


class Fleet:
    """A fleet's state in Redis, written the way the routers write it."""

    def __init__(self, store: Store, url: str) -> None:
        self.url = url
        self.prefix = f"fc{uuid.uuid4().hex[:10]}"
        self.keys = Keys(self.prefix)
        self.scripts = FleetScripts(store.redis, self.keys)
        self.registry = NodeRegistry(
            store.redis,
            self.keys,
            self.scripts,
            RegistryConfig(alive_ttl_ms=LONG_MS, forget_ms=600_000, default_max_concurrency=4),
        )

    async def register(
        self, machine: str, backend: GpuBackend, models: list[str], *, port: int, slots: int
    ) -> str:
        request = RegisterRequest(
            machine_name=machine,
            ip_address="127.0.0.1",
            runtime_port=port,
            gpu_backend=backend,
            executable_models=models,
            max_concurrency=slots,
        )
        registration = await self.registry.register(
            request, executable_models=models, gpu_backend=backend.value
        )
        return registration.node_id

    async def acquire(
        self, model: str, *, lease_ttl_ms: int = LONG_MS, ticket_ttl_ms: int = LONG_MS
    ) -> Any:
        return await self.scripts.acquire(
            model=model,
            lease_id=uuid.uuid4().hex,
            lease_ttl_ms=lease_ttl_ms,
            ticket=uuid.uuid4().hex,
            queue_max=100,
            ticket_ttl_ms=ticket_ttl_ms,
            forget_ms=600_000,
        )

    async def run(self, *args: str) -> int:
        """``llm-router fleet --redis-url ... --key-prefix ... ARGS``: its exit status."""
        return await asyncio.to_thread(
            fleetctl.main, ["--redis-url", self.url, "--key-prefix", self.prefix, *args]
        )


@pytest.fixture
async def fleet(redis_url: str) -> AsyncIterator[Fleet]:
    store = open_store(redis_url)
    try:
        yield Fleet(store, redis_url)
    finally:
        await store.close()


@pytest.fixture
def run(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> Any:
    async def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = await fleet.run(*args)
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return invoke


async def run_json(run: Any, *args: str) -> Any:
    status, out, err = await run("--json", *args)
    assert status == 0, err
    return json.loads(out)


async def test_nodes_lists_every_node_with_status_and_load(fleet: Fleet, run: Any) -> None:
    mac = await fleet.register("mac-1", GpuBackend.METAL, ["m-mlx", "m-gguf"], port=8100, slots=2)
    box = await fleet.register("cuda-1", GpuBackend.CUDA, ["m-gguf"], port=8100, slots=4)
    assert isinstance(await fleet.acquire("m-mlx"), Granted)

    nodes = {n["machine_name"]: n for n in await run_json(run, "nodes")}
    assert set(nodes) == {"mac-1", "cuda-1"}
    assert nodes["mac-1"]["id"] == mac and nodes["cuda-1"]["id"] == box
    assert nodes["mac-1"]["status"] == "online"
    assert (nodes["mac-1"]["in_flight"], nodes["mac-1"]["max_concurrency"]) == (1, 2)
    assert nodes["cuda-1"]["gpu_backend"] == "cuda"
    assert "token_hash" not in nodes["mac-1"]

    status, out, _ = await run("nodes")
    assert status == 0
    assert mac in out and "mac-1" in out and "cuda-1" in out
    assert "1/2" in out and "online" in out and "m-mlx" in out


async def test_models_shows_backends_and_unservable_models(fleet: Fleet, run: Any) -> None:
    await fleet.register("mac-1", GpuBackend.METAL, ["m-mlx", "m-gguf"], port=8100, slots=2)
    box = await fleet.register("cuda-1", GpuBackend.CUDA, ["m-gguf", "m-awq"], port=8100, slots=2)
    await fleet.registry.drain(box)

    models = {m["id"]: m for m in await run_json(run, "models")}
    assert set(models) == {"m-mlx", "m-gguf", "m-awq"}
    assert models["m-mlx"]["backends"] == ["metal"]
    assert models["m-gguf"]["backends"] == ["metal"]  # the CUDA box is draining
    assert models["m-gguf"]["live_nodes"] == 2 and models["m-gguf"]["online_nodes"] == 1
    # Known, alive, but nobody can take it now: this is the model that answers 503.
    assert models["m-awq"]["online_nodes"] == 0 and models["m-awq"]["routable_nodes"] == 0

    status, out, _ = await run("models")
    assert status == 0 and "m-awq" in out and "metal" in out


async def test_leases_reveal_an_expired_lease_nobody_pruned(fleet: Fleet, run: Any) -> None:
    node = await fleet.register("mac-1", GpuBackend.METAL, ["m1"], port=8100, slots=3)
    # Two requests on two replicas; one replica dies (never renews nor releases its lease),
    # the other keeps renewing its own.
    orphan = await fleet.acquire("m1", lease_ttl_ms=400)
    kept = await fleet.acquire("m1", lease_ttl_ms=400)
    assert isinstance(orphan, Granted) and isinstance(kept, Granted)
    await asyncio.sleep(0.1)
    await fleet.scripts.renew(
        lease_ttl_ms=LONG_MS, ticket_ttl_ms=LONG_MS, leases=[(node, kept.lease_id)], tickets=[]
    )
    await asyncio.sleep(0.5)

    (row,) = await run_json(run, "leases")
    assert row["node_id"] == node and row["machine_name"] == "mac-1"
    assert row["leases"] == 2
    assert row["in_flight"] == 1
    assert row["max_concurrency"] == 3
    assert row["expired_unpruned"] == 1
    assert row["earliest_deadline_in_s"] < 0

    status, out, _ = await run("leases")
    assert status == 0 and node in out and "EXPIRED" in out


async def test_queues_show_length_head_age_and_dead_tickets(fleet: Fleet, run: Any) -> None:
    await fleet.register("mac-1", GpuBackend.METAL, ["m1", "idle"], port=8100, slots=1)
    assert isinstance(await fleet.acquire("m1"), Granted)
    # First waiter's replica dies (ticket stops being renewed); the second one is alive.
    assert isinstance(await fleet.acquire("m1", ticket_ttl_ms=30), Queued)
    assert isinstance(await fleet.acquire("m1"), Queued)
    await asyncio.sleep(0.2)

    queues = {q["model"]: q for q in await run_json(run, "queues")}
    assert queues["m1"]["length"] == 2
    assert queues["m1"]["dead_tickets"] == 1
    assert queues["m1"]["head_age_s"] >= 0.15
    assert queues["idle"] == {
        "model": "idle", "length": 0, "head_age_s": None, "dead_tickets": 0, "tenants": []
    }  # fmt: skip
    # Both waiters are the default tenant in the middle band (the dead one is still listed
    # until an acquire prunes it).
    (group,) = queues["m1"]["tenants"]
    assert (group["tenant"], group["band"], group["waiting"]) == ("default", 5, 2)
    assert group["oldest_wait_s"] >= 0.15

    status, out, _ = await run("queues")
    assert status == 0 and "m1" in out and "DEAD TICKETS" in out and "5/default: 2" in out


async def test_drain_undrain_forget_by_machine_name_or_index(fleet: Fleet, run: Any) -> None:
    node = await fleet.register("mac-1", GpuBackend.METAL, ["m1"], port=8100, slots=1)

    result = await run_json(run, "drain", "mac-1")
    assert result == {
        "action": "drain",
        "node_id": node,
        "machine_name": "mac-1",
        "status": "draining",
        "in_flight": 0,
    }
    refused = await fleet.acquire("m1")
    assert not isinstance(refused, Granted)

    result = await run_json(run, "undrain", node[:8])
    assert result["status"] == "online"
    assert isinstance(await fleet.acquire("m1"), Granted)

    status, out, err = await run("forget", "mac-1:8100")
    assert status == 0, err
    assert node in out and "registers again" in err
    assert await run_json(run, "nodes") == []


async def test_node_names_that_match_nothing_or_several_fail_clearly(
    fleet: Fleet, run: Any
) -> None:
    first = await fleet.register("twin", GpuBackend.CPU, ["m1"], port=8100, slots=1)
    second = await fleet.register("twin", GpuBackend.CPU, ["m1"], port=8200, slots=1)

    status, out, err = await run("drain", "twin")
    assert status == 1 and out == ""
    assert "matches 2 nodes" in err and first in err and second in err

    status, _, err = await run("drain", "nobody")
    assert status == 1 and "no node matches 'nobody'" in err

    assert (await run_json(run, "drain", "twin:8200"))["node_id"] == second
    statuses = {n["id"]: n["status"] for n in await run_json(run, "nodes")}
    assert statuses == {first: "online", second: "draining"}


async def test_unreachable_or_missing_redis_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLM_ROUTER_REDIS_URL", raising=False)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    status = await asyncio.to_thread(fleetctl.main, ["--redis-url", dead, "nodes"])
    assert status == 1
    assert "cannot reach Redis" in capsys.readouterr().err

    status = await asyncio.to_thread(fleetctl.main, ["nodes"])
    assert status == 2
    assert "--redis-url" in capsys.readouterr().err

    status = await asyncio.to_thread(fleetctl.main, ["--redis-url", "memcached://x", "nodes"])
    assert status == 2
    assert "unsupported store URL scheme" in capsys.readouterr().err


async def test_the_installed_cli_reads_the_fleet(fleet: Fleet, redis_server: RedisServer) -> None:
    node = await fleet.register("mac-9", GpuBackend.METAL, ["m1"], port=8100, slots=2)
    env = {**os.environ, "LLM_ROUTER_REDIS_URL": redis_server.url}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "llm_router.cli", "fleet", "--key-prefix", fleet.prefix,
         "nodes", "--json"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (record,) = json.loads(done.stdout)
    assert record["id"] == node and record["machine_name"] == "mac-9"
