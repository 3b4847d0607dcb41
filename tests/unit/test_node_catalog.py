"""Catalog parsing, merging with the runtime, and the format defaults of BRIEF §4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_router.gpu import GpuBackend, ModelFormat, ModelSpec, Platform
from llm_router.node.catalog import CatalogError, load_catalog, merge_models, parse_catalog
from llm_router.node.state import Inventory


def test_json_list(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(
        json.dumps(
            [
                {"id": "llama-3-8b", "format": "GGUF", "quantization": "Q4_K_M"},
                {"id": "qwen", "platforms": ["linux-cuda", "macos-metal"]},
            ]
        )
    )
    specs = load_catalog(path)
    assert specs == [
        ModelSpec(id="llama-3-8b", format=ModelFormat.GGUF, quantization="Q4_K_M"),
        ModelSpec(id="qwen", platforms=frozenset({Platform.LINUX_CUDA, Platform.MACOS_METAL})),
    ]


def test_yaml_models_object(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("models:\n  - id: phi-3\n    format: mlx\n  - id: mistral\n")
    assert [s.id for s in load_catalog(path)] == ["phi-3", "mistral"]
    assert load_catalog(path)[0].format is ModelFormat.MLX


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"id": "a"}, {"format": "gguf"}], "models[1]: 'id' is required"),
        ([{"id": "a", "format": "exe"}], "models[0] ('a'): unknown format 'exe'"),
        ([{"id": "a", "platforms": ["linux-cuda", "amiga"]}], "unknown platform 'amiga'"),
        ([{"id": "a", "platforms": "cpu"}], "'platforms' must be a list"),
        ([{"id": "a", "size": 3}], "unknown field(s) size"),
        ([{"id": "a"}, {"id": "a"}], "models[1]: duplicate id 'a'"),
        (["a"], "models[0]: must be an object"),
        ({"nodes": []}, "expected a list of models"),
        ([{"id": ""}], "'id' must not be empty"),
    ],
)
def test_errors_name_the_entry(data: object, message: str) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(data, "cat.json")
    assert message in str(caught.value)
    assert str(caught.value).startswith("cat.json")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CatalogError, match="not valid JSON/YAML"):
        load_catalog(bad)


def test_merge_catalog_wins_field_by_field_and_adds_entries() -> None:
    catalog = [
        ModelSpec(id="shared", platforms=frozenset({Platform.MACOS_METAL})),
        ModelSpec(id="catalog-only", format=ModelFormat.GGUF),
    ]
    discovered = [
        ModelSpec(id="runtime-only"),
        ModelSpec(id="shared", format=ModelFormat.GGUF, quantization="Q8_0"),
    ]
    merged = merge_models(catalog, discovered)
    assert [m.id for m in merged] == ["runtime-only", "shared", "catalog-only"]
    shared = merged[1]
    # Platforms from the catalog, format/quantisation from the runtime where the catalog is silent.
    assert shared.platforms == frozenset({Platform.MACOS_METAL})
    assert shared.format is ModelFormat.GGUF
    assert shared.quantization == "Q8_0"


def _executable(backend: GpuBackend, *specs: ModelSpec) -> list[str]:
    return list(Inventory.build(backend, specs).executable)


@pytest.mark.parametrize("backend", list(GpuBackend))
def test_format_defaults(backend: GpuBackend) -> None:
    specs = (
        ModelSpec(id="a", format=ModelFormat.MLX),
        ModelSpec(id="b", format=ModelFormat.GGUF),
        ModelSpec(id="c", format=ModelFormat.AWQ),
        ModelSpec(id="d"),  # unknown format, no platforms: the runtime serves it
        ModelSpec(id="e-mlx-4bit"),  # format from the id
    )
    expected = {
        GpuBackend.METAL: ["a", "b", "d", "e-mlx-4bit"],
        GpuBackend.CUDA: ["b", "c", "d"],
        GpuBackend.ROCM: ["b", "c", "d"],
        GpuBackend.DIRECTML: ["b", "d"],
        GpuBackend.CPU: ["b", "d"],
    }[backend]
    assert _executable(backend, *specs) == expected


def test_explicit_platforms_override_format_default() -> None:
    spec = ModelSpec(id="m", format=ModelFormat.GGUF, platforms=frozenset({Platform.CPU}))
    assert _executable(GpuBackend.CUDA, spec) == []
    assert _executable(GpuBackend.CPU, spec) == ["m"]


def test_inventory_reports_installed_but_not_executable() -> None:
    inventory = Inventory.build(
        GpuBackend.CUDA, [ModelSpec(id="x-mlx"), ModelSpec(id="y", format=ModelFormat.GGUF)]
    )
    assert inventory.installed == ["x-mlx", "y"]
    assert inventory.executable == ("y",)
    assert not inventory.is_executable("x-mlx")
