"""The agent's side of the node protocol (BRIEF §3): register, heartbeat, deregister.

Registration retries with capped exponential backoff until a router answers; a heartbeat
answered 404 (the router forgot us) or 401 (our token was replaced) leads straight back to
registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from llm_router.node.detect import GpuInfo, GpuMetrics
from llm_router.node.load import LoadSampler
from llm_router.node.runtimes.base import RuntimeStatus
from llm_router.node.settings import AgentSettings
from llm_router.node.state import NodeState

log = logging.getLogger("llm_router.node")

FIRST_RETRY_S = 0.5
#: The first heartbeat that fails (no answer in time, connection refused) is tried again
#: this soon, not a whole interval later: with the defaults (a beat every 5 s, offline after
#: 10 s without one) one lost beat waited out in full would take the node offline. Later
#: failures in a row wait the interval: a fleet of agents must not hammer a router that is
#: down, or swamp it the moment it comes back.
RETRY_FAILED_BEAT_S = 0.5


def pause_before_beat(interval_s: float, failures: int) -> float:
    """The wait before the next heartbeat, after ``failures`` failed ones in a row."""
    return min(interval_s, RETRY_FAILED_BEAT_S) if failures == 1 else interval_s


def beat_timeout_s(interval_s: float, control_timeout_s: float) -> float:
    """How long one heartbeat may wait for its answer: well inside the interval, so that a
    router replica that stopped answering (its connection held by a hung process) leaves
    time for a retry on a fresh connection before the node's liveness lapses."""
    return max(1.0, min(control_timeout_s, interval_s * 0.5))


@dataclass(frozen=True)
class Registration:
    node_id: str
    token: str
    heartbeat_interval_s: float
    created: bool
    #: What the router presents on proxied requests; never logged.
    secret: str = field(default="", repr=False)


class RegistrationRejected(Exception):
    """The router answered, but not with a registration (the message says why)."""


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body["error"]["message"]
        if isinstance(message, str):
            return message
    except (ValueError, KeyError, TypeError):
        pass
    return response.text[:300]


def runtime_fields(state: NodeState) -> dict[str, Any]:
    """What the agent knows of its runtime (BRIEF §3). A runtime that is not ready
    advertises no executable model: its last list is history, not a promise."""
    report = state.runtime
    ready = state.runtime_ready
    executable = list(state.inventory.executable) if ready else []
    body: dict[str, Any] = {
        "executable_models": executable,
        "loaded_models": [m for m in report.loaded if m in executable],
        "runtime_status": str(report.status),
        "runtime_load": dict(report.load),
        "max_concurrency": state.max_concurrency,
        "max_concurrency_source": state.max_concurrency_source,
    }
    if state.runtime_kind:
        body["runtime_kind"] = state.runtime_kind
    if report.version:
        body["runtime_version"] = report.version
    return body


def register_body(settings: AgentSettings, state: NodeState) -> dict[str, Any]:
    gpu: GpuInfo = state.gpu
    inventory = state.inventory
    body: dict[str, Any] = {
        "machine_name": settings.machine_name,
        "ip_address": settings.registered_ip,
        "runtime_port": settings.runtime_port,
        "node_api_port": settings.port,
        "gpu_available": gpu.gpu_available,
        "gpu_devices": [d.wire() for d in gpu.devices],
        "gpu_count": gpu.gpu_count,
        "gpu_backend": str(gpu.backend),
        "models": inventory.installed,
        **runtime_fields(state),
        "scheme": settings.scheme,
    }
    if gpu.gpu_model:
        body["gpu_model"] = gpu.gpu_model
    if gpu.capability_score is not None:
        body["gpu_capability_score"] = gpu.capability_score
    return body


def heartbeat_body(
    node_id: str,
    state: NodeState,
    load: LoadSampler,
    gpu_metrics: GpuMetrics | None,
) -> dict[str, Any]:
    inventory = state.inventory
    runtime = runtime_fields(state)
    executable = runtime["executable_models"]
    body: dict[str, Any] = {
        "node_id": node_id,
        "cpu_usage": load.cpu_percent(),
        "memory_usage": load.memory_percent(),
        "active_requests": state.active_requests,
        "models": inventory.installed,
        "gpu_backend": str(inventory.backend),
        "initializing": state.runtime.status is RuntimeStatus.LOADING,
        "ready_models": [len(executable), len(inventory.executable)],
        **runtime,
    }
    if state.average_response_time_ms is not None:
        body["average_response_time_ms"] = round(state.average_response_time_ms, 3)
    if state.gpu.gpu_model:
        body["gpu_model_name"] = state.gpu.gpu_model
    if state.gpu.compute_capability:
        body["gpu_compute_capability"] = state.gpu.compute_capability
    if state.gpu.capability_score is not None:
        body["gpu_capability_score"] = state.gpu.capability_score
    if gpu_metrics is not None:
        body.update(gpu_metrics.wire())
    return body


class RouterClient:
    """HTTP calls to the router's node API."""

    def __init__(self, http: httpx.AsyncClient, router_url: str, node_key: str | None) -> None:
        self.http = http
        self.router_url = router_url.rstrip("/")
        self.node_key = node_key

    async def register(self, body: dict[str, Any]) -> Registration:
        headers = {"Authorization": f"Bearer {self.node_key}"} if self.node_key else {}
        response = await self.http.post(f"{self.router_url}/v0/nodes", json=body, headers=headers)
        if response.status_code not in (200, 201):
            raise RegistrationRejected(f"HTTP {response.status_code}: {_error_message(response)}")
        data = response.json()
        try:
            return Registration(
                node_id=str(data["node_id"]),
                token=str(data["node_token"]),
                heartbeat_interval_s=float(data.get("heartbeat_interval_s") or 0) or 5.0,
                created=response.status_code == 201,
                secret=str(data["node_secret"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            # Named, not shown: the reply holds this node's credentials.
            raise RegistrationRejected(
                f"unexpected registration reply (fields {sorted(data)!r})"
                if isinstance(data, dict)
                else "unexpected registration reply"
            ) from exc

    async def heartbeat(
        self, registration: Registration, body: dict[str, Any], timeout_s: float | None = None
    ) -> int:
        response = await self.http.post(
            f"{self.router_url}/v0/health",
            json=body,
            headers={"X-Node-Token": registration.token},
            # httpx drops a connection whose request timed out, so the retry opens a new one.
            timeout=timeout_s if timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
        )
        if response.status_code >= 400:
            log.debug("heartbeat answered %s: %s", response.status_code, _error_message(response))
        return response.status_code

    async def deregister(self, registration: Registration) -> int:
        response = await self.http.delete(
            f"{self.router_url}/v0/nodes/{registration.node_id}",
            headers={"X-Node-Token": registration.token},
        )
        return response.status_code


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True when ``stop`` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class Heartbeat:
    """Keeps this node registered and fresh in the router until told to stop."""

    def __init__(
        self,
        settings: AgentSettings,
        state: NodeState,
        client: RouterClient,
        *,
        refresh_runtime: Callable[[], Awaitable[object]] | None = None,
        read_gpu_metrics: Callable[[], Awaitable[GpuMetrics | None]] | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.client = client
        self.refresh_runtime = refresh_runtime
        self.read_gpu_metrics = read_gpu_metrics
        self.load = LoadSampler()
        self.registration: Registration | None = None
        self.registrations = 0
        self.heartbeats_sent = 0

    async def register_until_accepted(self, stop: asyncio.Event) -> Registration | None:
        delay = FIRST_RETRY_S
        last_problem = ""
        while not stop.is_set():
            try:
                registration = await self.client.register(register_body(self.settings, self.state))
            except (httpx.HTTPError, RegistrationRejected, ValueError) as exc:
                problem = str(exc) or type(exc).__name__
                if problem != last_problem:
                    log.warning(
                        "registration with %s failed (%s); retrying",
                        self.client.router_url,
                        problem,
                    )
                    last_problem = problem
            else:
                self.registration = registration
                # From now on only the secret of this registration opens the node API.
                self.state.credential.set(registration.secret)
                self.registrations += 1
                log.info(
                    "%s with %s as node %s (heartbeat every %.1fs)",
                    "registered" if registration.created else "re-registered",
                    self.client.router_url,
                    registration.node_id,
                    registration.heartbeat_interval_s,
                )
                return registration
            if await _sleep_or_stop(stop, delay):
                break
            delay = min(delay * 2, self.settings.register_retry_max_s)
        return None

    async def beat(self) -> int:
        assert self.registration is not None
        metrics = await self.read_gpu_metrics() if self.read_gpu_metrics else None
        body = heartbeat_body(self.registration.node_id, self.state, self.load, metrics)
        timeout_s = beat_timeout_s(
            self.registration.heartbeat_interval_s, self.settings.control_timeout_s
        )
        status = await self.client.heartbeat(self.registration, body, timeout_s)
        self.heartbeats_sent += 1
        return status

    async def run(self, stop: asyncio.Event) -> None:
        registration = await self.register_until_accepted(stop)
        failures = 0  # heartbeats failed in a row
        while registration is not None and not stop.is_set():
            pause = pause_before_beat(registration.heartbeat_interval_s, failures)
            if await _sleep_or_stop(stop, pause):
                return
            # Every heartbeat carries a fresh reading: a dead runtime leaves routing on the
            # next beat, a returning one comes back on the first beat after it answers.
            if self.refresh_runtime is not None:
                await self.refresh_runtime()
            try:
                status = await self.beat()
            except httpx.HTTPError as exc:
                failures += 1
                log.warning(
                    "heartbeat to %s failed (%s); trying again in %.1fs",
                    self.client.router_url,
                    str(exc) or type(exc).__name__,
                    pause_before_beat(registration.heartbeat_interval_s, failures),
                )
                continue
            failures = 0
            if status in (401, 404):
                log.warning("router no longer knows this node (HTTP %s); re-registering", status)
                registration = await self.register_until_accepted(stop)

    async def deregister(self) -> None:
        if self.registration is None:
            return
        try:
            status = await self.client.deregister(self.registration)
        except httpx.HTTPError as exc:
            log.warning("could not deregister from %s: %s", self.client.router_url, exc)
            return
        log.info("deregistered node %s (HTTP %s)", self.registration.node_id, status)
