"""What the integration tests observe: clients, node-side concurrency, SSE events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from integration.procs import Router, SimNode


class SdkClients:
    """Makes official clients pointed at one replica, with their own retries off (every
    retry in these tests is the router's), and closes them all at the end of the test."""

    def __init__(self) -> None:
        self._made: list[openai.AsyncOpenAI] = []

    def __call__(self, router: Router, timeout_s: float = 30.0) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=router.api_base, api_key="x", max_retries=0, timeout=timeout_s
        )
        self._made.append(client)
        return client

    async def close(self) -> None:
        for client in self._made:
            await client.close()


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object of a response, checking the shape on the way."""
    payload = response.json()
    assert set(payload) == {"error"}, payload
    error: dict[str, Any] = payload["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    return error


def retry_after(headers: Mapping[str, str]) -> int:
    value = headers.get("retry-after")
    assert value is not None, f"no Retry-After in {dict(headers)}"
    seconds = int(value)
    assert seconds >= 1
    return seconds


@dataclass
class ConcurrencyProbe:
    """Samples a simulated node's agent while load runs: the highest number of requests it
    was handling at once. The agent counts a request before its runtime can refuse it, so
    an overfilled node shows up here even when the runtime answers 429."""

    node: SimNode
    interval_s: float = 0.01
    peak: int = 0
    samples: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def _run(self) -> None:
        url = f"http://127.0.0.1:{self.node.port}/healthz"
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    active = int((await http.get(url)).json()["active_requests"])
                    self.peak = max(self.peak, active)
                    self.samples += 1
                await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> ConcurrencyProbe:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass
class TimedEvent:
    at: float
    data: str


async def sse_events(response: httpx.Response) -> AsyncIterator[TimedEvent]:
    """``data:`` payloads of an SSE response, each stamped with its arrival time."""
    buffer = ""
    async for text in response.aiter_text():
        now = time.monotonic()
        buffer += text
        while "\n\n" in buffer:
            event, buffer = buffer.split("\n\n", 1)
            for line in event.splitlines():
                if line.startswith("data:"):
                    yield TimedEvent(now, line[5:].strip())


def parse_event(event: TimedEvent) -> dict[str, Any] | None:
    if event.data == "[DONE]":
        return None
    parsed: dict[str, Any] = json.loads(event.data)
    return parsed


def registration_body(machine: str, models: list[str], **extra: Any) -> dict[str, Any]:
    """A registration of a node no agent stands behind (nothing is proxied to it)."""
    return {
        "machine_name": machine,
        "ip_address": "127.0.0.1",
        "runtime_port": 9000,
        "node_api_port": 9,
        "gpu_backend": "cpu",
        "executable_models": models,
        **extra,
    }
