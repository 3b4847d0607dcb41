"""Model discovery from OpenAI-style and Ollama runtimes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from llm_router.gpu import ModelFormat, ModelSpec
from llm_router.node.runtime import RuntimeUnavailable, discover_models


def client(routes: dict[str, Any]) -> httpx.AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path in routes:
            return httpx.Response(200, json=routes[request.url.path])
        return httpx.Response(404, json={"error": "nope"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def test_openai_runtime() -> None:
    async with client({"/v1/models": {"data": [{"id": "a"}, {"id": "b"}, {"nope": 1}]}}) as http:
        assert await discover_models(http, "http://rt") == [ModelSpec("a"), ModelSpec("b")]


async def test_ollama_details_format() -> None:
    tags = {
        "models": [
            {
                "name": "llama3:8b",
                "model": "llama3:8b",
                "details": {"format": "gguf", "quantization_level": "Q4_0"},
            },
            {"name": "odd", "details": {"format": "weird"}},
        ]
    }
    openai = {"data": [{"id": "llama3:8b"}, {"id": "odd"}]}
    async with client({"/api/tags": tags, "/v1/models": openai}) as http:
        specs = await discover_models(http, "http://rt")
    assert specs == [
        ModelSpec("llama3:8b", format=ModelFormat.GGUF, quantization="Q4_0"),
        ModelSpec("odd"),
    ]


async def test_ollama_without_openai_listing() -> None:
    tags = {"models": [{"name": "m", "details": {"format": "gguf"}}]}
    async with client({"/api/tags": tags}) as http:
        assert await discover_models(http, "http://rt") == [ModelSpec("m", format=ModelFormat.GGUF)]


async def test_nothing_answers() -> None:
    async with client({}) as http:
        with pytest.raises(RuntimeUnavailable, match="http://rt/v1/models"):
            await discover_models(http, "http://rt")
