"""The model catalog: what the operator declares about installed models.

A catalog is a JSON or YAML file holding a list of entries, or ``{"models": [...]}``, each
``{"id": str, "format"?: str, "quantization"?: str, "platforms"?: [str]}``. It wins over
whatever the runtime says, field by field, and its entries count as installed even when
the runtime does not list them (BRIEF §4).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from llm_router.gpu import ModelFormat, ModelSpec, Platform
from llm_router.protocol import validate_model_id

_ENTRY_KEYS = frozenset({"id", "format", "quantization", "platforms"})


class CatalogError(ValueError):
    """A catalog that cannot be used; the message names the file and the entry."""


def _allowed(enum: Iterable[Any]) -> str:
    return ", ".join(str(e.value) for e in enum)


def parse_entry(raw: Any, where: str) -> ModelSpec:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must be an object with an 'id', got {type(raw).__name__}")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise CatalogError(
            f"{where}: unknown field(s) {', '.join(unknown)} (allowed: id, format, "
            "quantization, platforms)"
        )
    model_id = raw.get("id")
    if not isinstance(model_id, str):
        raise CatalogError(f"{where}: 'id' is required and must be a string")
    try:
        validate_model_id(model_id)
    except ValueError as exc:
        raise CatalogError(f"{where}: 'id' {exc}") from None
    where = f"{where} ({model_id!r})"

    fmt: ModelFormat | None = None
    raw_format = raw.get("format")
    if raw_format is not None:
        if not isinstance(raw_format, str):
            raise CatalogError(f"{where}: 'format' must be a string")
        try:
            fmt = ModelFormat(raw_format.strip().lower())
        except ValueError:
            raise CatalogError(
                f"{where}: unknown format {raw_format!r} (allowed: {_allowed(ModelFormat)})"
            ) from None

    quantization = raw.get("quantization")
    if quantization is not None and not isinstance(quantization, str):
        raise CatalogError(f"{where}: 'quantization' must be a string")

    raw_platforms = raw.get("platforms")
    platforms: set[Platform] = set()
    if raw_platforms is not None:
        if not isinstance(raw_platforms, list):
            raise CatalogError(f"{where}: 'platforms' must be a list of strings")
        for value in raw_platforms:
            try:
                platforms.add(Platform(str(value).strip().lower()))
            except ValueError:
                raise CatalogError(
                    f"{where}: unknown platform {value!r} (allowed: {_allowed(Platform)})"
                ) from None
    return ModelSpec(
        id=model_id, format=fmt, quantization=quantization, platforms=frozenset(platforms)
    )


def parse_catalog(data: Any, source: str = "catalog") -> list[ModelSpec]:
    entries = data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise CatalogError(f"{source}: expected a list of models or an object with 'models'")
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for index, raw in enumerate(entries):
        spec = parse_entry(raw, f"{source}: models[{index}]")
        if spec.id in seen:
            raise CatalogError(f"{source}: models[{index}]: duplicate id {spec.id!r}")
        seen.add(spec.id)
        specs.append(spec)
    return specs


def load_catalog(path: Path) -> list[ModelSpec]:
    """Read a catalog file; JSON or YAML is chosen by extension (YAML also reads JSON)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalog: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: not valid JSON/YAML: {exc}") from None
    return parse_catalog(data, str(path))


def merge_models(catalog: Sequence[ModelSpec], discovered: Sequence[ModelSpec]) -> list[ModelSpec]:
    """Runtime models plus catalog entries; for a model in both, each catalog field wins.

    The runtime's format metadata (e.g. Ollama's) fills a format the catalog leaves out.
    Order: the runtime's order, then catalog-only entries in catalog order.
    """
    declared = {spec.id: spec for spec in catalog}
    merged: list[ModelSpec] = []
    seen: set[str] = set()
    for found in discovered:
        if found.id in seen:
            continue
        seen.add(found.id)
        entry = declared.get(found.id)
        if entry is None:
            merged.append(found)
            continue
        merged.append(
            ModelSpec(
                id=found.id,
                format=entry.format or found.format,
                quantization=entry.quantization or found.quantization,
                platforms=entry.platforms or found.platforms,
            )
        )
    merged.extend(spec for spec in catalog if spec.id not in seen)
    return merged
