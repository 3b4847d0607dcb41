"""Ollama.

From Ollama's API documentation: ``GET /api/tags`` lists installed models with
``details.format`` (``gguf``) and ``details.quantization_level``; ``GET /api/ps`` lists the
models loaded in memory now; ``GET /api/version`` gives ``{"version": ...}``; ``GET /``
answers "Ollama is running". Parallelism (``OLLAMA_NUM_PARALLEL``) and the request queue
are not in the API: capacity comes from ``--max-concurrency``, and no load figures exist.
"""

from __future__ import annotations

from typing import Any

from llm_router.gpu import ModelSpec, parse_format
from llm_router.node.runtimes.base import (
    RuntimeHttp,
    RuntimeKind,
    RuntimeProblem,
    RuntimeReport,
    RuntimeStatus,
)


def _entries(data: Any) -> list[dict[str, Any]]:
    items = data.get("models") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise RuntimeProblem(RuntimeStatus.UNREACHABLE, "the model listing has no 'models' list")
    return [item for item in items if isinstance(item, dict)]


def _model_id(item: dict[str, Any]) -> str | None:
    model_id = item.get("model") or item.get("name")
    return model_id if isinstance(model_id, str) and model_id else None


def tags_specs(data: Any) -> tuple[ModelSpec, ...]:
    specs = []
    for item in _entries(data):
        model_id = _model_id(item)
        if model_id is None:
            continue
        raw = item.get("details")
        details: dict[str, Any] = raw if isinstance(raw, dict) else {}
        fmt = details.get("format")
        quant = details.get("quantization_level")
        specs.append(
            ModelSpec(
                id=model_id,
                format=parse_format(fmt if isinstance(fmt, str) else None),
                quantization=quant if isinstance(quant, str) else None,
            )
        )
    return tuple(specs)


def ps_loaded(data: Any) -> tuple[str, ...]:
    return tuple(m for m in (_model_id(item) for item in _entries(data)) if m)


def version_of(data: Any) -> str | None:
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, str) and version else None


class OllamaAdapter:
    kind = RuntimeKind.OLLAMA

    async def probe(self, http: RuntimeHttp) -> bool:
        # llama.cpp also answers /api/tags, so the version endpoint is the tell.
        data = await http.get("/api/version", optional=True)
        return version_of(data) is not None and set(data) == {"version"}

    async def read(self, http: RuntimeHttp) -> RuntimeReport:
        try:
            specs = tags_specs(await http.get("/api/tags"))
            loaded = ps_loaded(await http.get("/api/ps"))
            version = version_of(await http.get("/api/version", optional=True))
        except RuntimeProblem as exc:
            return RuntimeReport.down(exc)
        return RuntimeReport(RuntimeStatus.READY, models=specs, loaded=loaded, version=version)
