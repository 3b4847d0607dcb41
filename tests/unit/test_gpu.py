"""GPU backends on the wire, backend inference from device names, model compatibility."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from llm_router.gpu import (
    UNKNOWN_BACKEND,
    GpuBackend,
    ModelFormat,
    ModelSpec,
    Platform,
    compatible_backends,
    format_from_model_id,
    infer_gpu_backend,
    is_compatible,
    list_executable_models,
    parse_format,
)
from llm_router.protocol import HeartbeatRequest, RegisterRequest

ALL_BACKENDS = {"metal", "cuda", "rocm", "directml", "cpu"}
BASE_REGISTER = {"machine_name": "box", "ip_address": "10.0.0.5", "runtime_port": 8000}

# --- GpuBackend (de)serialisation ----------------------------------------------------------


def test_backend_values_are_the_lower_case_wire_strings() -> None:
    assert {b.value for b in GpuBackend} == ALL_BACKENDS
    assert GpuBackend("metal") is GpuBackend.METAL
    wire: str = "cuda"
    assert wire == GpuBackend.CUDA
    assert str(GpuBackend.ROCM) == "rocm"
    assert json.dumps({"b": GpuBackend.DIRECTML}) == '{"b": "directml"}'


@pytest.mark.parametrize("value", sorted(ALL_BACKENDS))
def test_backend_round_trips_through_register_request(value: str) -> None:
    request = RegisterRequest.model_validate({**BASE_REGISTER, "gpu_backend": value})
    assert request.gpu_backend is GpuBackend(value)
    dumped = request.model_dump(mode="json")
    assert dumped["gpu_backend"] == value
    again = RegisterRequest.model_validate_json(request.model_dump_json())
    assert again.gpu_backend is GpuBackend(value)


def test_backend_absent_is_none() -> None:
    assert RegisterRequest.model_validate(BASE_REGISTER).gpu_backend is None


@pytest.mark.parametrize("value", ["vulkan", "CUDA", "Metal", "", "unknown", 3, None])
def test_invalid_backend_is_rejected_naming_the_allowed_values(value: object) -> None:
    if value is None:
        # null is "not given", which is allowed.
        assert RegisterRequest.model_validate({**BASE_REGISTER, "gpu_backend": None})
        return
    with pytest.raises(ValidationError) as info:
        RegisterRequest.model_validate({**BASE_REGISTER, "gpu_backend": value})
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [("gpu_backend",)]
    message = errors[0]["msg"]
    for allowed in ALL_BACKENDS:
        assert allowed in message


def test_invalid_backend_in_heartbeat_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        HeartbeatRequest.model_validate({"node_id": "n1", "gpu_backend": "opencl"})
    assert info.value.errors()[0]["loc"] == ("gpu_backend",)


# --- infer_gpu_backend ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "names",
    [
        ["NVIDIA GeForce RTX 4090"],
        ["GeForce GTX 1080 Ti"],
        ["RTX 4090"],
        ["NVIDIA RTX A6000"],
        ["Tesla T4"],
        ["T4"],
        ["H100"],
        ["NVIDIA H100 80GB HBM3"],
        ["A100-SXM4-40GB"],
        ["NVIDIA A100"],
        ["Quadro RTX 8000"],
        ["nvidia l4"],
    ],
)
def test_nvidia_devices_are_cuda(names: list[str]) -> None:
    assert infer_gpu_backend(names) == GpuBackend.CUDA


@pytest.mark.parametrize(
    "names",
    [
        ["Apple M1"],
        ["Apple M2"],
        ["Apple M3"],
        ["Apple M4"],
        ["Apple M2 Max"],
        ["Apple M1 Ultra"],
        ["Apple M3 Pro"],
        ["M4 Max"],
        ["apple m2"],
    ],
)
def test_apple_silicon_is_metal(names: list[str]) -> None:
    assert infer_gpu_backend(names) == GpuBackend.METAL


@pytest.mark.parametrize(
    "names",
    [
        ["AMD Radeon RX 7900 XTX"],
        ["Radeon Pro W7900"],
        ["AMD Instinct MI300X"],
        ["Instinct MI250"],
        ["MI300X"],
        ["AMD"],
    ],
)
def test_amd_devices_are_rocm(names: list[str]) -> None:
    assert infer_gpu_backend(names) == GpuBackend.ROCM


@pytest.mark.parametrize("names", [[], [None], ["", "   "]])
def test_no_gpu_is_cpu(names: list[str | None]) -> None:
    assert infer_gpu_backend(names) == GpuBackend.CPU


@pytest.mark.parametrize(
    "names",
    [
        ["Matrox G200eW"],
        ["Moore Threads MTT S80"],
        ["Some Accelerator 9000"],
        ["Intel Arc A770"],
    ],
)
def test_unknown_vendor_is_unknown(names: list[str]) -> None:
    assert infer_gpu_backend(names) == UNKNOWN_BACKEND == "unknown"


def test_first_recognised_device_decides() -> None:
    assert infer_gpu_backend(["Matrox G200", "NVIDIA A10G"]) == GpuBackend.CUDA


def test_register_request_device_names_feed_inference() -> None:
    request = RegisterRequest.model_validate(
        {**BASE_REGISTER, "gpu_devices": [{"model": "Apple M2 Max", "count": 1}]}
    )
    assert infer_gpu_backend(request.device_names()) == GpuBackend.METAL
    request = RegisterRequest.model_validate({**BASE_REGISTER, "gpu_model": "Tesla T4"})
    assert infer_gpu_backend(request.device_names()) == GpuBackend.CUDA
    # A device listed with count 0 is not there.
    request = RegisterRequest.model_validate(
        {**BASE_REGISTER, "gpu_devices": [{"model": "NVIDIA H100", "count": 0}]}
    )
    assert infer_gpu_backend(request.device_names()) == GpuBackend.CPU


# --- compatibility ----------------------------------------------------------------------------


def _runs_on(spec: ModelSpec) -> set[str]:
    return {b.value for b in GpuBackend if is_compatible(spec, b)}


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (ModelFormat.GGUF, ALL_BACKENDS),
        (ModelFormat.MLX, {"metal"}),
        (ModelFormat.COREML, {"metal"}),
        (ModelFormat.AWQ, {"cuda", "rocm"}),
        (ModelFormat.GPTQ, {"cuda", "rocm"}),
        (ModelFormat.TENSORRT, {"cuda"}),
        (ModelFormat.FP8, {"cuda"}),
        (ModelFormat.ONNX_DIRECTML, {"directml"}),
    ],
)
def test_format_defaults(fmt: ModelFormat, expected: set[str]) -> None:
    assert _runs_on(ModelSpec(id="some-model", format=fmt)) == expected


def test_declared_platforms_override_the_format() -> None:
    gguf_on_metal = ModelSpec(
        id="x.gguf", format=ModelFormat.GGUF, platforms=frozenset({Platform.MACOS_METAL})
    )
    assert _runs_on(gguf_on_metal) == {"metal"}
    mlx_declared_cuda = ModelSpec(
        id="x-mlx", format=ModelFormat.MLX, platforms=frozenset({Platform.LINUX_CUDA})
    )
    assert _runs_on(mlx_declared_cuda) == {"cuda"}
    both = ModelSpec(
        id="y", platforms=frozenset({Platform.WINDOWS_CUDA, Platform.WINDOWS_DIRECTML})
    )
    assert _runs_on(both) == {"cuda", "directml"}
    assert _runs_on(ModelSpec(id="z", platforms=frozenset({Platform.LINUX_ROCM}))) == {"rocm"}
    assert _runs_on(ModelSpec(id="z", platforms=frozenset({Platform.CPU}))) == {"cpu"}


def test_unknown_format_without_platforms_is_compatible_everywhere() -> None:
    spec = ModelSpec(id="my-private-model")
    assert compatible_backends(spec) is None
    assert _runs_on(spec) == ALL_BACKENDS
    # Plain safetensors says nothing about placement either.
    assert _runs_on(ModelSpec(id="m", format=ModelFormat.SAFETENSORS)) == ALL_BACKENDS


def test_is_compatible_accepts_backend_strings() -> None:
    spec = ModelSpec(id="x", format=ModelFormat.MLX)
    assert is_compatible(spec, "metal") is True
    assert is_compatible(spec, "cuda") is False
    assert is_compatible(spec, UNKNOWN_BACKEND) is False


@pytest.mark.parametrize(
    ("model_id", "fmt"),
    [
        ("TheBloke/Llama-2-7B-GGUF", ModelFormat.GGUF),
        ("llama-3-8b.Q4_K_M.gguf", ModelFormat.GGUF),
        ("mlx-community/Mistral-7B-Instruct-v0.3-4bit", ModelFormat.MLX),
        ("Qwen/Qwen2-7B-Instruct-MLX", ModelFormat.MLX),
        ("TheBloke/Mistral-7B-AWQ", ModelFormat.AWQ),
        ("llama-2-13b-GpTq", ModelFormat.GPTQ),
        ("neuralmagic/Meta-Llama-3-8B-Instruct-FP8", ModelFormat.FP8),
        ("llama-tensorrt-engine", ModelFormat.TENSORRT),
        ("phi-3-onnx-DirectML", ModelFormat.ONNX_DIRECTML),
        ("apple/coreml-stable-diffusion", ModelFormat.COREML),
        ("llama3:8b", None),
        ("gpt-oss-20b", None),
    ],
)
def test_format_from_model_id(model_id: str, fmt: ModelFormat | None) -> None:
    assert format_from_model_id(model_id) == fmt


def test_format_from_id_drives_compatibility() -> None:
    assert _runs_on(ModelSpec(id="mlx-community/Qwen2-7B")) == {"metal"}
    assert _runs_on(ModelSpec(id="Mistral-7B-AWQ")) == {"cuda", "rocm"}
    assert _runs_on(ModelSpec(id="llama.GGUF")) == ALL_BACKENDS
    # An explicit format beats what the id suggests.
    assert _runs_on(ModelSpec(id="mlx-named.gguf-ish", format=ModelFormat.GGUF)) == ALL_BACKENDS


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        ("gguf", ModelFormat.GGUF),
        ("GGUF", ModelFormat.GGUF),
        (" mlx ", ModelFormat.MLX),
        ("onnx-directml", ModelFormat.ONNX_DIRECTML),
        ("safetensors", ModelFormat.SAFETENSORS),
        ("", None),
        (None, None),
        ("no-idea", None),
    ],
)
def test_parse_format(value: str | None, fmt: ModelFormat | None) -> None:
    assert parse_format(value) == fmt


def test_list_executable_models_filters_by_backend() -> None:
    specs = [
        ModelSpec(id="a.gguf"),
        ModelSpec(id="b-mlx"),
        ModelSpec(id="c-awq"),
        ModelSpec(id="d"),
        ModelSpec(id="e", platforms=frozenset({Platform.WINDOWS_DIRECTML})),
    ]
    assert list_executable_models(specs, GpuBackend.METAL) == ["a.gguf", "b-mlx", "d"]
    assert list_executable_models(specs, GpuBackend.CUDA) == ["a.gguf", "c-awq", "d"]
    assert list_executable_models(specs, GpuBackend.ROCM) == ["a.gguf", "c-awq", "d"]
    assert list_executable_models(specs, GpuBackend.DIRECTML) == ["a.gguf", "d", "e"]
    assert list_executable_models(specs, GpuBackend.CPU) == ["a.gguf", "d"]
