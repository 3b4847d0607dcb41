"""LM Studio.

From LM Studio's REST API documentation: the v0 API's ``GET /api/v0/models`` lists every
downloaded model with ``state`` (``loaded`` / ``not-loaded``), ``compatibility_type``
(``gguf`` or ``mlx``), ``quantization`` and ``type`` (``llm``, ``vlm``, ``embeddings``).
LM Studio 0.4.0 added a native v1 API whose ``GET /api/v1/models`` lists ``models[]`` by
``key`` with ``loaded_instances``; it is read first, v0 when it is absent. A request for a
not-loaded model loads it (just-in-time loading). Capacity, load and version are not
exposed; health is the OpenAI listing ``GET /v1/models``.
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

MODELS_PATH = "/api/v0/models"
V1_MODELS_PATH = "/api/v1/models"


def _text(item: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = item.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _entries(data: Any) -> list[tuple[str, dict[str, Any]]]:
    """(model id, entry) from either listing: v1 ``models[].key``, v0 ``data[].id``."""
    if isinstance(data, dict) and isinstance(data.get("models"), list):
        items, id_field = data["models"], "key"
    elif isinstance(data, dict) and isinstance(data.get("data"), list):
        items, id_field = data["data"], "id"
    else:
        raise RuntimeProblem(RuntimeStatus.UNREACHABLE, "LM Studio's model listing has no list")
    entries = []
    for item in items:
        if isinstance(item, dict) and (model_id := _text(item, id_field)):
            entries.append((model_id, item))
    return entries


def _is_loaded(item: dict[str, Any]) -> bool:
    instances = item.get("loaded_instances")
    return item.get("state") == "loaded" or (isinstance(instances, list) and bool(instances))


def specs_of(data: Any) -> tuple[ModelSpec, ...]:
    return tuple(
        ModelSpec(
            id=model_id,
            format=parse_format(_text(item, "compatibility_type", "format")),
            quantization=_text(item, "quantization"),
        )
        for model_id, item in _entries(data)
    )


def loaded_of(data: Any) -> tuple[str, ...]:
    return tuple(model_id for model_id, item in _entries(data) if _is_loaded(item))


async def _listing(http: RuntimeHttp) -> Any:
    data = await http.get(V1_MODELS_PATH, optional=True)
    if isinstance(data, dict) and isinstance(data.get("models"), list):
        return data
    return await http.get(MODELS_PATH)


class LmStudioAdapter:
    kind = RuntimeKind.LMSTUDIO

    async def probe(self, http: RuntimeHttp) -> bool:
        for path, key in ((V1_MODELS_PATH, "models"), (MODELS_PATH, "data")):
            data = await http.get(path, optional=True)
            if isinstance(data, dict) and isinstance(data.get(key), list):
                return True
        return False

    async def read(self, http: RuntimeHttp) -> RuntimeReport:
        try:
            await http.get("/v1/models")
            data = await _listing(http)
            specs, loaded = specs_of(data), loaded_of(data)
        except RuntimeProblem as exc:
            return RuntimeReport.down(exc)
        return RuntimeReport(RuntimeStatus.READY, models=specs, loaded=loaded)
