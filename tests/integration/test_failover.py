"""Failover, streaming and clients going away, through real processes.

The failing nodes run on Metal, whose capability score beats the healthy CUDA node's, so
an idle fleet tries the failing node first and the test sees the failover happen:

    broken   metal  answers 500          fo-500, fo-500-stream, fo-500-only
    dropper  metal  drops the connection fo-drop
    healthy  cuda                        fo-500, fo-500-stream, fo-drop
    dying    cpu    dies mid-stream      fo-mid
    slow     cpu    10 tokens/s          fo-slow
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from integration.conftest import open_cluster
from integration.probes import SdkClients, chat_body, error_of, parse_event, sse_events
from integration.procs import Cluster

pytestmark = pytest.mark.redis

SLOW_TOKENS_PER_S = 10


class Fleet:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.router = cluster.start_router(exclusion_cooldown_s=30)
        start = cluster.start_node
        self.broken = start(
            ["fo-500", "fo-500-stream", "fo-500-only"], backend="metal", fail_mode="500"
        )
        self.dropper = start(["fo-drop"], backend="metal", fail_mode="drop")
        self.healthy = start(["fo-500", "fo-500-stream", "fo-drop"], backend="cuda")
        self.dying = start(["fo-mid"], backend="cpu", fail_mode="midstream", tokens_per_s=100)
        self.slow = start(["fo-slow"], backend="cpu", tokens_per_s=SLOW_TOKENS_PER_S)
        self.ids = cluster.wait_all()

    def excluded(self, machine_name: str) -> dict[str, object]:
        for record in self.cluster.nodes_view(self.router):
            if record["machine_name"] == machine_name:
                excluded: dict[str, object] = record["excluded_models"]
                return excluded
        raise AssertionError(f"{machine_name} is not registered")


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with open_cluster(redis_url) as cluster:
        yield Fleet(cluster)


@pytest.mark.parametrize(("model", "bad"), [("fo-500", "broken"), ("fo-drop", "dropper")])
def test_failing_node_is_skipped_and_the_client_gets_200(
    fleet: Fleet, model: str, bad: str
) -> None:
    client = openai.OpenAI(base_url=fleet.router.api_base, api_key="x", max_retries=0)
    healthy = fleet.ids[fleet.healthy.machine_name]
    # Different requests: one request failing, however often retried, proves nothing.
    for i in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"hi {i}"}]
        )
        assert raw.status_code == 200
        assert raw.headers["x-llm-router-node"] == healthy
        content = raw.parse().choices[0].message.content or ""
        assert content.startswith(f"Hello from {fleet.healthy.machine_name} serving {model}")
    # The failures were seen (the failing node was tried) and shared through Redis.
    assert model in fleet.excluded(getattr(fleet, bad).machine_name)
    assert fleet.excluded(fleet.healthy.machine_name) == {}


async def test_streaming_request_fails_over_before_the_first_byte(
    fleet: Fleet, sdk: SdkClients
) -> None:
    for i in range(3):
        stream = await sdk(fleet.router).chat.completions.create(
            model="fo-500-stream", messages=[{"role": "user", "content": f"hi {i}"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text.startswith(f"Hello from {fleet.healthy.machine_name} serving fo-500-stream")
    assert "fo-500-stream" in fleet.excluded(fleet.broken.machine_name)


def test_every_attempt_failing_is_502_upstream_error(fleet: Fleet) -> None:
    for i in range(4):
        response = httpx.post(
            f"{fleet.router.api_base}/chat/completions",
            json=chat_body("fo-500-only", user=f"u{i}"),
            timeout=10,
        )
        assert response.status_code == 502, response.text
        assert error_of(response)["code"] == "upstream_error"
    # Each request failed everywhere it could go: the requests' problem, so the only node
    # stays in routing (a 503 would say no node can run the model).
    assert fleet.excluded(fleet.broken.machine_name).get("fo-500-only") is None


def test_node_4xx_passes_through_and_excludes_nothing(fleet: Fleet) -> None:
    response = httpx.post(
        f"{fleet.router.api_base}/chat/completions",
        json=chat_body("fo-slow", max_tokens=-1),
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == "max_tokens"
    assert response.headers["x-llm-router-node"] == fleet.ids[fleet.slow.machine_name]
    assert fleet.excluded(fleet.slow.machine_name) == {}


async def test_midstream_failure_ends_the_stream_with_one_error_event(fleet: Fleet) -> None:
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream(
            "POST",
            f"{fleet.router.api_base}/chat/completions",
            json=chat_body("fo-mid", stream=True, max_tokens=10),
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [e async for e in sse_events(response)]
    assert events, "no events at all"
    assert all(e.data != "[DONE]" for e in events)
    parsed = [parse_event(e) for e in events]
    errors = [p for p in parsed if p is not None and "error" in p]
    assert len(errors) == 1
    assert parsed[-1] is errors[0], "the error event must be the last one"
    error = errors[0]["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    chunks = parsed[:-1]
    assert chunks and all(p is not None and p["object"] == "chat.completion.chunk" for p in chunks)
    text = "".join(
        (p["choices"][0]["delta"].get("content") or "") for p in chunks if p and p["choices"]
    )
    assert text.startswith("Hello from")


async def test_midstream_failure_surfaces_as_an_sdk_error(fleet: Fleet, sdk: SdkClients) -> None:
    stream = await sdk(fleet.router).chat.completions.create(
        model="fo-mid", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=10
    )
    received: list[str] = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received).startswith("Hello from")


async def test_stream_chunks_arrive_as_the_node_makes_them(fleet: Fleet, sdk: SdkClients) -> None:
    # 8 tokens at 10/s: the node needs 0.7 s after its first token. Buffering anywhere
    # would deliver them together.
    started = time.monotonic()
    stream = await sdk(fleet.router).chat.completions.create(
        model="fo-slow", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=8
    )
    arrivals: list[float] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    generation_s = 7 / SLOW_TOKENS_PER_S
    assert len(arrivals) == 8
    assert arrivals == sorted(arrivals)
    # The first token was in the client's hands long before the node made the last one.
    assert arrivals[-1] - arrivals[0] > generation_s * 0.6, arrivals
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sum(g > 0.03 for g in gaps) >= 5, gaps


async def _leases_held(http: httpx.AsyncClient, fleet: Fleet) -> int:
    text = (await http.get(f"{fleet.router.url}/metrics")).text
    found = re.search(r"^llm_router_leases_held (\d+)$", text, re.MULTILINE)
    assert found, text
    return int(found.group(1))


async def _until_no_lease(http: httpx.AsyncClient, fleet: Fleet, timeout_s: float) -> float:
    started = time.monotonic()
    while await _leases_held(http, fleet) > 0:
        waited = time.monotonic() - started
        assert waited < timeout_s, f"the lease was still held after {waited:.1f}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_client_leaving_a_stream_releases_the_lease(fleet: Fleet) -> None:
    # 40 tokens at 10/s: the node would stream for ~4 s; the client leaves after one chunk.
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream(
            "POST",
            f"{fleet.router.api_base}/chat/completions",
            json=chat_body("fo-slow", stream=True, max_tokens=40),
        ) as response:
            assert response.status_code == 200
            async for _ in response.aiter_raw():
                break
            assert await _leases_held(http, fleet) == 1
        await _until_no_lease(http, fleet, timeout_s=1.5)


async def test_client_leaving_a_non_streaming_request_releases_the_lease(fleet: Fleet) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        request = asyncio.create_task(
            http.post(
                f"{fleet.router.api_base}/chat/completions",
                json=chat_body("fo-slow", max_tokens=40),
            )
        )
        try:
            deadline = time.monotonic() + 3
            while await _leases_held(http, fleet) == 0:
                assert time.monotonic() < deadline, "the request never took a lease"
                await asyncio.sleep(0.02)
        finally:
            request.cancel()  # closes the connection while the node is still working
            await asyncio.gather(request, return_exceptions=True)
        await _until_no_lease(http, fleet, timeout_s=1.5)
