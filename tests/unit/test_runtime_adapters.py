"""Runtime adapters against the response shapes each runtime documents (runtime_shapes/).

Ollama, vLLM, SGLang, LM Studio and MLX cannot run here; these tests hold the adapters to
the shapes recorded from their documentation (see runtime_shapes/README.md). llama.cpp is
also exercised for real in tests/runtime/.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_router.gpu import ModelFormat, ModelSpec
from llm_router.node.runtimes import (
    AutoAdapter,
    RuntimeHttp,
    RuntimeKind,
    RuntimeReport,
    RuntimeStatus,
    make_adapter,
)
from llm_router.node.runtimes.base import prometheus_values, runtime_load

SHAPES = Path(__file__).parent / "runtime_shapes"
KEY = "rt-secret"


def shape(name: str) -> Any:
    text = (SHAPES / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


Route = Any  # a JSON body, a text body, an int status, or a callable(request) -> Response


def runtime(routes: dict[str, Route], *, key: str | None = None) -> httpx.AsyncClient:
    """A fake runtime answering ``routes``; with ``key`` every route but /health wants it."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path not in routes:
            return httpx.Response(404, json={"error": "not found"})
        if key and path != "/health" and request.headers.get("authorization") != f"Bearer {key}":
            return httpx.Response(401, json={"error": {"message": "Invalid API Key"}})
        route = routes[path]
        if callable(route):
            response: httpx.Response = route(request)
            return response
        if isinstance(route, int):
            return httpx.Response(route)
        if isinstance(route, str):
            return httpx.Response(200, text=route)
        return httpx.Response(200, json=route)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def read(kind: RuntimeKind, routes: dict[str, Route], **kw: Any) -> RuntimeReport:
    api_key = kw.pop("api_key", None)
    async with runtime(routes, **kw) as client:
        return await make_adapter(kind).read(RuntimeHttp(client, "http://rt", api_key))


OLLAMA = {
    "/": "Ollama is running",
    "/api/tags": shape("ollama_tags.json"),
    "/api/ps": shape("ollama_ps.json"),
    "/api/version": shape("ollama_version.json"),
    "/v1/models": {"object": "list", "data": [{"id": "llama3.2:latest"}, {"id": "gemma3:latest"}]},
}
VLLM = {
    "/health": 200,
    "/v1/models": shape("vllm_models.json"),
    "/version": shape("vllm_version.json"),
    "/metrics": shape("vllm_metrics.txt"),
}
SGLANG = {
    "/health": 200,
    "/v1/models": shape("sglang_models.json"),
    "/get_server_info": shape("sglang_server_info.json"),
    "/metrics": shape("sglang_metrics.txt"),
}
LMSTUDIO_V0 = {
    "/v1/models": {"object": "list", "data": [{"id": "meta-llama-3.1-8b-instruct"}]},
    "/api/v0/models": shape("lmstudio_v0_models.json"),
}
LMSTUDIO_V1 = {
    "/v1/models": {"object": "list", "data": [{"id": "openai/gpt-oss-20b"}]},
    "/api/v1/models": shape("lmstudio_v1_models.json"),
}
MLX = {"/v1/models": shape("mlx_models.json")}
LLAMACPP = {
    "/health": {"status": "ok"},
    "/v1/models": shape("llamacpp_models.json"),
    "/api/tags": shape("llamacpp_models.json"),
    "/props": shape("llamacpp_props.json"),
    "/slots": shape("llamacpp_slots.json"),
}
LLAMACPP_ROUTER = {
    "/health": {"status": "ok"},
    "/v1/models": shape("llamacpp_router_models.json"),
    "/props": shape("llamacpp_router_props.json"),
}

# --- one adapter per runtime ----------------------------------------------------------


async def test_ollama() -> None:
    report = await read(RuntimeKind.OLLAMA, OLLAMA)
    assert report.status is RuntimeStatus.READY
    assert report.models == (
        ModelSpec("llama3.2:latest", format=ModelFormat.GGUF, quantization="Q4_K_M"),
        ModelSpec("gemma3:latest", format=ModelFormat.GGUF, quantization="Q4_K_M"),
    )
    assert report.loaded == ("gemma3:latest",)
    assert report.version == "0.12.6"
    # Parallelism is an environment variable of the server, not in its API.
    assert report.capacity is None and report.load == {}


async def test_vllm() -> None:
    report = await read(RuntimeKind.VLLM, VLLM)
    assert report.status is RuntimeStatus.READY
    assert [s.id for s in report.models or ()] == ["meta-llama/Llama-3.1-8B-Instruct"]
    assert report.loaded == ("meta-llama/Llama-3.1-8B-Instruct",)
    assert report.version == "0.11.0"
    assert report.load == {"running": 3, "waiting": 2, "kv_cache_usage": 0.42}
    assert report.capacity is None


async def test_vllm_before_the_kv_metric_rename() -> None:
    report = await read(RuntimeKind.VLLM, {**VLLM, "/metrics": shape("vllm_metrics_legacy.txt")})
    assert report.load == {"running": 1, "waiting": 0, "kv_cache_usage": 0.1}


async def test_vllm_keyed_listing_is_unauthorized_although_health_is_open() -> None:
    report = await read(RuntimeKind.VLLM, VLLM, key=KEY)
    assert report.status is RuntimeStatus.UNAUTHORIZED
    assert report.models is None
    report = await read(RuntimeKind.VLLM, VLLM, key=KEY, api_key=KEY)
    assert report.status is RuntimeStatus.READY


async def test_sglang() -> None:
    report = await read(RuntimeKind.SGLANG, SGLANG)
    assert report.status is RuntimeStatus.READY
    assert report.loaded == ("Qwen/Qwen2.5-7B-Instruct",)
    assert report.capacity == 48
    assert report.version == "0.5.4"
    assert report.load == {"running": 5, "waiting": 1, "kv_cache_usage": 0.28}


async def test_sglang_newer_server_info_path() -> None:
    routes = {k: v for k, v in SGLANG.items() if k != "/get_server_info"}
    routes["/server_info"] = shape("sglang_server_info.json")
    assert (await read(RuntimeKind.SGLANG, routes)).capacity == 48


async def test_lmstudio_v0() -> None:
    report = await read(RuntimeKind.LMSTUDIO, LMSTUDIO_V0)
    assert report.status is RuntimeStatus.READY
    specs = {s.id: s for s in report.models or ()}
    assert specs["qwen2-vl-7b-instruct"].format is ModelFormat.MLX
    assert specs["meta-llama-3.1-8b-instruct"].format is ModelFormat.GGUF
    assert specs["meta-llama-3.1-8b-instruct"].quantization == "Q4_K_M"
    assert report.loaded == ("meta-llama-3.1-8b-instruct",)


async def test_lmstudio_v1() -> None:
    report = await read(RuntimeKind.LMSTUDIO, LMSTUDIO_V1)
    assert [s.id for s in report.models or ()] == [
        "openai/gpt-oss-20b",
        "text-embedding-nomic-embed-text-v1.5",
    ]
    assert report.loaded == ("openai/gpt-oss-20b",)


async def test_mlx_models_are_mlx_format() -> None:
    report = await read(RuntimeKind.MLX, MLX)
    assert report.models == (
        ModelSpec("mlx-community/Llama-3.2-3B-Instruct-4bit", format=ModelFormat.MLX),
    )
    assert report.loaded == ("mlx-community/Llama-3.2-3B-Instruct-4bit",)


async def test_llamacpp_single_model() -> None:
    report = await read(RuntimeKind.LLAMACPP, LLAMACPP)
    assert report.status is RuntimeStatus.READY
    assert [s.id for s in report.models or ()] == ["tiny.gguf"]
    assert report.loaded == ("tiny.gguf",)
    assert report.capacity == 2
    assert report.version == "b6959-1a2b3c4d"
    assert report.load == {"running": 1}


async def test_llamacpp_router_mode_names_the_loaded_model() -> None:
    report = await read(RuntimeKind.LLAMACPP, LLAMACPP_ROUTER)
    assert [s.id for s in report.models or ()] == ["alpha", "beta"]
    assert report.loaded == ("alpha",)
    assert report.capacity is None


async def test_llamacpp_loading_is_503_on_health() -> None:
    routes = {**LLAMACPP, "/health": lambda _r: httpx.Response(503, json={"error": {}})}
    report = await read(RuntimeKind.LLAMACPP, routes)
    assert report.status is RuntimeStatus.LOADING and report.models is None


async def test_llamacpp_key_is_checked_past_the_open_health_route() -> None:
    assert (await read(RuntimeKind.LLAMACPP, LLAMACPP, key=KEY)).status is (
        RuntimeStatus.UNAUTHORIZED
    )
    assert (await read(RuntimeKind.LLAMACPP, LLAMACPP, key=KEY, api_key=KEY)).status is (
        RuntimeStatus.READY
    )


# --- statuses common to all ------------------------------------------------------------

ALL = [
    (RuntimeKind.LLAMACPP, LLAMACPP, "/v1/models"),
    (RuntimeKind.OLLAMA, OLLAMA, "/api/tags"),
    (RuntimeKind.VLLM, VLLM, "/v1/models"),
    (RuntimeKind.SGLANG, SGLANG, "/v1/models"),
    (RuntimeKind.LMSTUDIO, LMSTUDIO_V0, "/v1/models"),
    (RuntimeKind.MLX, MLX, "/v1/models"),
    (RuntimeKind.OPENAI, MLX, "/v1/models"),
]


@pytest.mark.parametrize(("kind", "routes", "listing"), ALL, ids=[k for k, _, _ in ALL])
@pytest.mark.parametrize("code", [401, 403])
async def test_refused_listing_is_unauthorized(
    kind: RuntimeKind, routes: dict[str, Route], listing: str, code: int
) -> None:
    report = await read(kind, {**routes, listing: code})
    assert report.status is RuntimeStatus.UNAUTHORIZED
    assert str(code) in report.detail
    assert report.models is None


@pytest.mark.parametrize(("kind", "routes", "listing"), ALL, ids=[k for k, _, _ in ALL])
async def test_5xx_listing_is_unreachable(
    kind: RuntimeKind, routes: dict[str, Route], listing: str
) -> None:
    report = await read(kind, {**routes, listing: 500})
    assert report.status is RuntimeStatus.UNREACHABLE and report.models is None


@pytest.mark.parametrize("kind", [k for k in RuntimeKind])
async def test_connection_refused_is_unreachable(kind: RuntimeKind) -> None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        # Port 9 on loopback: nothing listens there.
        report = await make_adapter(kind).read(RuntimeHttp(client, "http://127.0.0.1:9", None))
    assert report.status is RuntimeStatus.UNREACHABLE
    assert "127.0.0.1:9" in report.detail


async def test_key_is_sent_on_every_call() -> None:
    seen: list[tuple[str, str | None]] = []

    def record(body: Any) -> Callable[[httpx.Request], httpx.Response]:
        def answer(request: httpx.Request) -> httpx.Response:
            seen.append((request.url.path, request.headers.get("authorization")))
            return (
                httpx.Response(200, text=body)
                if isinstance(body, str)
                else httpx.Response(200, json=body)
            )

        return answer

    routes = {path: record(body) for path, body in VLLM.items() if path != "/health"}
    routes["/health"] = lambda r: (
        seen.append((r.url.path, r.headers.get("authorization"))) or httpx.Response(200)
    )
    await read(RuntimeKind.VLLM, routes, api_key=KEY)
    assert {p for p, _ in seen} == {"/health", "/v1/models", "/version", "/metrics"}
    assert all(auth == f"Bearer {KEY}" for _, auth in seen)


# --- auto ------------------------------------------------------------------------------

PROBED = [
    (LLAMACPP, RuntimeKind.LLAMACPP),
    (LLAMACPP_ROUTER, RuntimeKind.LLAMACPP),
    (OLLAMA, RuntimeKind.OLLAMA),
    (VLLM, RuntimeKind.VLLM),
    (SGLANG, RuntimeKind.SGLANG),
    (LMSTUDIO_V0, RuntimeKind.LMSTUDIO),
    (LMSTUDIO_V1, RuntimeKind.LMSTUDIO),
    (MLX, RuntimeKind.OPENAI),
]


@pytest.mark.parametrize(("routes", "kind"), PROBED, ids=[str(i) for i in range(len(PROBED))])
async def test_auto_detects_the_kind(routes: dict[str, Route], kind: RuntimeKind) -> None:
    adapter = AutoAdapter()
    async with runtime(routes) as client:
        report = await adapter.read(RuntimeHttp(client, "http://rt", None))
    assert report.status is RuntimeStatus.READY
    assert adapter.resolved_kind is kind


async def test_auto_keeps_probing_while_the_runtime_is_down() -> None:
    adapter = AutoAdapter()
    async with runtime({}) as client:
        report = await adapter.read(RuntimeHttp(client, "http://rt", None))
    assert report.status is RuntimeStatus.UNREACHABLE
    assert adapter.resolved_kind is RuntimeKind.AUTO
    async with runtime(VLLM) as client:
        await adapter.read(RuntimeHttp(client, "http://rt", None))
    assert adapter.resolved_kind is RuntimeKind.VLLM


async def test_auto_on_a_keyed_runtime_without_the_key_is_unauthorized() -> None:
    adapter = AutoAdapter()
    async with runtime(LLAMACPP, key=KEY) as client:
        report = await adapter.read(RuntimeHttp(client, "http://rt", None))
    assert report.status is RuntimeStatus.UNAUTHORIZED


# --- parsing helpers -------------------------------------------------------------------


def test_prometheus_sums_series_over_labels_and_skips_comments() -> None:
    text = (
        "# HELP x y\n"
        'vllm:num_requests_running{model_name="a"} 2\n'
        'vllm:num_requests_running{model_name="b c"} 3\n'
        "vllm:num_requests_waiting 1e0\n"
        "garbage line\n"
    )
    names = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting"}
    assert prometheus_values(text, names) == {"running": 5.0, "waiting": 1.0}


def test_load_figures_take_the_wire_shape() -> None:
    assert runtime_load({"running": 2.0, "waiting": 0.0, "kv_cache_usage": 42.0}) == {
        "running": 2,
        "waiting": 0,
        "kv_cache_usage": 0.42,
    }
    assert runtime_load({"running": -1.0}) == {}
