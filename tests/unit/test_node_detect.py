"""GPU detection: every branch, with fake probes standing in for the machine."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import pytest

from llm_router.gpu import GpuBackend, infer_gpu_backend
from llm_router.node.detect import (
    GpuDevice,
    Probes,
    capability_score,
    declared_gpu,
    get_gpu_backend,
    read_gpu_metrics,
)


def fake_run(outputs: Mapping[str, str]) -> Callable[[Sequence[str]], str | None]:
    """Answers a command whose argv joined by spaces contains a key; None (missing) otherwise."""

    def run(argv: Sequence[str]) -> str | None:
        line = " ".join(argv)
        for needle, out in outputs.items():
            if needle in line:
                return out
        return None

    return run


def probes(
    outputs: Mapping[str, str] | None = None,
    *,
    system: str = "Linux",
    machine: str = "x86_64",
    paths: frozenset[str] = frozenset(),
    nvml: list[GpuDevice] | None = None,
) -> Probes:
    return Probes(
        run=fake_run(outputs or {}),
        system=lambda: system,
        machine=lambda: machine,
        path_exists=lambda p: p in paths,
        nvml=lambda: nvml,
    )


def test_nothing_found_is_cpu() -> None:
    info = get_gpu_backend(probes())
    assert info.backend is GpuBackend.CPU
    assert info.devices == ()
    assert not info.gpu_available
    assert info.capability_score is None


def test_nvml_wins_when_importable() -> None:
    info = get_gpu_backend(probes(nvml=[GpuDevice("NVIDIA H100 80GB HBM3", memory_mb=81559)] * 2))
    assert info.backend is GpuBackend.CUDA
    assert info.devices == (GpuDevice("NVIDIA H100 80GB HBM3", count=2, memory_mb=81559),)
    assert info.gpu_count == 2
    assert info.gpu_available


def test_nvidia_smi_with_compute_capability() -> None:
    out = "NVIDIA A100-SXM4-80GB, 81920, 8.0\nNVIDIA A100-SXM4-80GB, 81920, 8.0\n"
    info = get_gpu_backend(probes({"compute_cap": out}))
    assert info.backend is GpuBackend.CUDA
    assert info.devices == (GpuDevice("NVIDIA A100-SXM4-80GB", count=2, memory_mb=81920),)
    assert info.compute_capability == "8.0"
    # 160 GB x 100 x 0.8 (Ampere)
    assert info.capability_score == 10000
    assert infer_gpu_backend([info.gpu_model]) == GpuBackend.CUDA


def test_nvidia_smi_old_driver_without_compute_cap() -> None:
    info = get_gpu_backend(probes({"--query-gpu=name,memory.total": "Tesla T4, 15360\n"}))
    assert info.backend is GpuBackend.CUDA
    assert info.devices == (GpuDevice("Tesla T4", memory_mb=15360),)
    assert info.compute_capability is None
    assert info.capability_score == 1500


def test_amd_via_rocm_smi() -> None:
    names = {"card0": {"Card series": "AMD Instinct MI300X", "Card vendor": "AMD"}}
    memory = {"card0": {"VRAM Total Memory (B)": str(192 * 1024**3)}}
    info = get_gpu_backend(
        probes({"--showproductname": json.dumps(names), "--showmeminfo": json.dumps(memory)})
    )
    assert info.backend is GpuBackend.ROCM
    assert info.devices == (GpuDevice("AMD Instinct MI300X", memory_mb=192 * 1024),)
    assert info.capability_score == 10000
    assert infer_gpu_backend([info.gpu_model]) == GpuBackend.ROCM


def test_amd_kernel_driver_without_tools() -> None:
    info = get_gpu_backend(probes(paths=frozenset({"/dev/kfd"})))
    assert info.backend is GpuBackend.ROCM
    assert info.gpu_available


def test_nvidia_checked_before_amd() -> None:
    names = {"card0": {"Card series": "Radeon RX 7900 XTX"}}
    info = get_gpu_backend(
        probes(
            {
                "compute_cap": "NVIDIA GeForce RTX 4090, 24564, 8.9",
                "--showproductname": json.dumps(names),
            }
        )
    )
    assert info.backend is GpuBackend.CUDA


def test_apple_silicon() -> None:
    info = get_gpu_backend(
        probes(
            {"machdep.cpu.brand_string": "Apple M2 Ultra\n", "hw.memsize": str(192 * 1024**3)},
            system="Darwin",
            machine="arm64",
        )
    )
    assert info.backend is GpuBackend.METAL
    assert info.gpu_model == "Apple M2 Ultra"
    assert info.memory_total_mb == 192 * 1024
    assert infer_gpu_backend([info.gpu_model]) == GpuBackend.METAL


def test_intel_mac_is_cpu() -> None:
    info = get_gpu_backend(probes(system="Darwin", machine="x86_64"))
    assert info.backend is GpuBackend.CPU


def test_linux_arm64_is_not_metal() -> None:
    assert get_gpu_backend(probes(machine="aarch64")).backend is GpuBackend.CPU


def test_windows_without_nvidia_is_directml() -> None:
    info = get_gpu_backend(
        probes({"Win32_VideoController": "AMD Radeon RX 7900 XTX\r\n"}, system="Windows")
    )
    assert info.backend is GpuBackend.DIRECTML
    assert info.gpu_model == "AMD Radeon RX 7900 XTX"


def test_windows_with_nvidia_is_cuda() -> None:
    info = get_gpu_backend(
        probes({"compute_cap": "NVIDIA GeForce RTX 3080, 10240, 8.6"}, system="Windows")
    )
    assert info.backend is GpuBackend.CUDA


def test_declared_backend_keeps_matching_devices_only() -> None:
    machine = probes({"compute_cap": "NVIDIA L4, 23034, 8.9"})
    assert declared_gpu(GpuBackend.CUDA, machine).gpu_model == "NVIDIA L4"
    overridden = declared_gpu(GpuBackend.CPU, machine)
    assert overridden.backend is GpuBackend.CPU
    assert overridden.devices == ()


@pytest.mark.parametrize(
    ("memory_mb", "cc", "expected"),
    [
        (81920, "9.0", 8000),
        (81920, "8.0", 6400),
        (24564, "8.9", 1919),
        (16384, "7.5", 960),
        (8192, "6.1", 320),
        (8192, None, 800),
    ],
)
def test_capability_score_heuristic(memory_mb: float, cc: str | None, expected: float) -> None:
    assert capability_score([GpuDevice("x", memory_mb=memory_mb)], cc) == expected


def test_capability_score_unknown_without_memory() -> None:
    assert capability_score([GpuDevice("x")]) is None


def test_nvidia_metrics_aggregate_devices() -> None:
    out = "50, 1000, 8000, 60\n70, 3000, 8000, 75\n"
    metrics = read_gpu_metrics(GpuBackend.CUDA, probes({"utilization.gpu": out}))
    assert metrics is not None
    assert metrics.wire() == {
        "gpu_usage": 60.0,
        "gpu_memory_used_mb": 4000.0,
        "gpu_memory_total_mb": 16000.0,
        "gpu_memory_usage": 25.0,
        "gpu_temperature": 75.0,
    }


def test_amd_metrics() -> None:
    data = {
        "card0": {
            "GPU use (%)": "40",
            "Temperature (Sensor edge) (C)": "55.0",
            "VRAM Total Memory (B)": str(64 * 1024**3),
            "VRAM Total Used Memory (B)": str(16 * 1024**3),
        }
    }
    metrics = read_gpu_metrics(GpuBackend.ROCM, probes({"--showuse": json.dumps(data)}))
    assert metrics is not None
    wire = metrics.wire()
    assert wire["gpu_usage"] == 40.0
    assert wire["gpu_memory_usage"] == 25.0
    assert wire["gpu_temperature"] == 55.0


def test_metrics_absent_where_no_tool() -> None:
    assert read_gpu_metrics(GpuBackend.CUDA, probes()) is None
    assert read_gpu_metrics(GpuBackend.METAL, probes()) is None
