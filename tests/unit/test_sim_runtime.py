"""The simulated runtime as an ASGI app: replies, embeddings, concurrency, failure schedule."""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import httpx
import pytest

from llm_router.node.settings import FailMode
from llm_router.sim.runtime import SimConfig, SimRuntime, embedding_for, tokens_for


def make(**overrides: object) -> tuple[SimRuntime, httpx.AsyncClient]:
    config = SimConfig(node_name="sim-a", models=("m1", "m2"), ttft_ms=0, tokens_per_s=1e6)
    config = SimConfig(**{**config.__dict__, **overrides})  # type: ignore[arg-type]
    runtime = SimRuntime(config)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=runtime), base_url="http://sim")
    return runtime, client


async def test_models_listing() -> None:
    _, client = make()
    async with client:
        data = (await client.get("/v1/models")).json()
    assert [m["id"] for m in data["data"]] == ["m1", "m2"]


async def test_chat_non_stream_names_node_and_model() -> None:
    _, client = make()
    async with client:
        r = await client.post("/v1/chat/completions", json={"model": "m2", "max_tokens": 3})
    body = r.json()
    assert r.headers["x-sim-node"] == "sim-a"
    assert body["model"] == "m2"
    assert body["choices"][0]["message"]["content"] == "".join(tokens_for("sim-a", "m2", 3))
    assert "sim-a" in body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


async def test_chat_stream_format() -> None:
    _, client = make()
    async with client:
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "m1",
                "stream": True,
                "max_tokens": 2,
                "stream_options": {"include_usage": True},
            },
        )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "".join(tokens_for("sim-a", "m1", 2))
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


async def test_completions_stream_and_plain() -> None:
    _, client = make()
    async with client:
        plain = (await client.post("/v1/completions", json={"model": "m1", "prompt": "x"})).json()
        stream = await client.post(
            "/v1/completions", json={"model": "m1", "prompt": "x", "stream": True}
        )
    assert plain["object"] == "text_completion"
    assert plain["choices"][0]["text"].startswith("Hello from sim-a serving m1.")
    assert stream.text.endswith("data: [DONE]\n\n")


async def test_embeddings_are_deterministic_and_base64_decodes() -> None:
    _, client = make()
    async with client:
        floats = (
            await client.post("/v1/embeddings", json={"model": "m1", "input": ["a", "b"]})
        ).json()
        encoded = (
            await client.post(
                "/v1/embeddings",
                json={"model": "m1", "input": "a", "encoding_format": "base64", "dimensions": 8},
            )
        ).json()
    assert floats["data"][0]["embedding"] == embedding_for("m1", "a")
    assert floats["data"][0]["embedding"] != floats["data"][1]["embedding"]
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(embedding_for("m1", "a", 8), abs=1e-6)
    assert sum(v * v for v in decoded) == pytest.approx(1.0, abs=1e-4)


async def test_bad_requests() -> None:
    _, client = make()
    async with client:
        unknown = await client.post("/v1/chat/completions", json={"model": "zzz"})
        broken = await client.post("/v1/chat/completions", content=b"{")
        bad_input = await client.post("/v1/embeddings", json={"model": "m1", "input": 5})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["param"] == "model"
    assert broken.status_code == 400
    assert bad_input.status_code == 400
    assert bad_input.json()["error"]["param"] == "input"


async def test_busy_beyond_max_concurrency() -> None:
    runtime, client = make(max_concurrency=1, ttft_ms=300)
    async with client:
        first = asyncio.create_task(client.post("/v1/chat/completions", json={"model": "m1"}))
        while runtime.active == 0:  # noqa: ASYNC110 - polling the object under test
            await asyncio.sleep(0.005)
        second = await client.post("/v1/chat/completions", json={"model": "m1"})
        assert second.status_code == 429
        assert second.json()["error"]["type"] == "rate_limit_error"
        assert (await first).status_code == 200


async def test_http_500_after_n() -> None:
    _, client = make(fail_mode=FailMode.HTTP_500, fail_after_n=2)
    async with client:
        codes = [
            (await client.post("/v1/chat/completions", json={"model": "m1"})).status_code
            for _ in range(4)
        ]
    assert codes == [200, 200, 500, 500]


@pytest.mark.parametrize(
    ("rate", "after", "expected"),
    [
        (1.0, 0, [True] * 6),
        (0.5, 0, [False, True] * 3),
        (0.0, 0, [False] * 6),
        (1.0, 3, [False, False, False, True, True, True]),
    ],
)
def test_failure_schedule_is_deterministic(rate: float, after: int, expected: list[bool]) -> None:
    runtime = SimRuntime(
        SimConfig(
            node_name="n",
            models=("m",),
            fail_mode=FailMode.DROP,
            fail_rate=rate,
            fail_after_n=after,
        )
    )
    assert [runtime._should_fail(n) for n in range(1, 7)] == expected


def test_no_failures_when_mode_none() -> None:
    runtime = SimRuntime(SimConfig(node_name="n", models=("m",), fail_rate=1.0))
    assert not any(runtime._should_fail(n) for n in range(1, 10))
