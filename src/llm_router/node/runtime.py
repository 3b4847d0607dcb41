"""Model discovery from the inference runtime: OpenAI ``/v1/models`` and Ollama ``/api/tags``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from llm_router.gpu import ModelSpec, parse_format


class RuntimeUnavailable(RuntimeError):
    """Neither model listing answered; the message names the URLs tried."""


def _openai_specs(data: Any) -> list[ModelSpec] | None:
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return [
        ModelSpec(id=item["id"])
        for item in items
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]
    ]


def _ollama_specs(data: Any) -> list[ModelSpec] | None:
    items = data.get("models") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    specs = []
    for item in items:
        if not isinstance(item, dict):
            continue
        model_id = item.get("model") or item.get("name")
        if not isinstance(model_id, str) or not model_id:
            continue
        raw_details = item.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        fmt = details.get("format") if isinstance(details.get("format"), str) else None
        quant = details.get("quantization_level")
        specs.append(
            ModelSpec(
                id=model_id,
                format=parse_format(fmt),
                quantization=quant if isinstance(quant, str) else None,
            )
        )
    return specs


async def _get_json(client: httpx.AsyncClient, url: str) -> Any:
    try:
        response = await client.get(url)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


async def discover_models(client: httpx.AsyncClient, runtime_url: str) -> list[ModelSpec]:
    """The runtime's models; Ollama's metadata fills in formats where the runtime has it.

    Both listings are asked at once: an Ollama server answers both, and only ``/api/tags``
    carries ``details.format``.
    """
    openai_url = f"{runtime_url}/v1/models"
    ollama_url = f"{runtime_url}/api/tags"
    openai_data, ollama_data = await asyncio.gather(
        _get_json(client, openai_url), _get_json(client, ollama_url)
    )
    openai_specs = _openai_specs(openai_data)
    ollama_specs = _ollama_specs(ollama_data)
    if openai_specs is None and ollama_specs is None:
        raise RuntimeUnavailable(f"runtime did not list its models at {openai_url} or {ollama_url}")
    by_id = {spec.id: spec for spec in ollama_specs or []}
    specs: list[ModelSpec] = []
    for spec in openai_specs or []:
        specs.append(by_id.pop(spec.id, spec))
    specs.extend(by_id.values())
    return specs
