"""GPU backend detection and GPU metrics, through injectable probes.

Detection order, first match wins: NVIDIA (NVML if importable, else ``nvidia-smi``) →
AMD (``rocm-smi``, else the ``/dev/kfd`` device node) → Apple Silicon (Darwin on arm64) →
DirectML (Windows without an NVIDIA driver) → cpu.

Every contact with the machine goes through ``Probes`` so each branch is testable on a
machine without GPUs.

Capability score (0-10000, ``None`` when there is no GPU): total GPU memory in GB x 100,
times a generation factor where the probe reports one (NVIDIA compute capability: ≥ 9 → 1.0,
8.x → 0.8, 7.x → 0.6, older → 0.4; otherwise 1.0), capped at 10000. Memory is what decides
which models fit and how many run at once, so it is the first-order term; an 80 GB H100
scores 8000, an 80 GB A100 6400, a 24 GB RTX 4090 (8.9) 1920, a 192 GB M2 Ultra 10000.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import platform
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_router.gpu import GpuBackend

_COMMAND_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class GpuDevice:
    model: str
    count: int = 1
    memory_mb: float | None = None

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "count": self.count}
        if self.memory_mb is not None:
            out["memory"] = self.memory_mb
        return out


@dataclass(frozen=True)
class GpuInfo:
    """What detection found: the backend, its devices and a capability score."""

    backend: GpuBackend
    devices: tuple[GpuDevice, ...] = ()
    capability_score: float | None = None
    compute_capability: str | None = None

    @property
    def gpu_available(self) -> bool:
        return self.backend is not GpuBackend.CPU and bool(self.devices)

    @property
    def gpu_count(self) -> int:
        return sum(d.count for d in self.devices)

    @property
    def gpu_model(self) -> str | None:
        return self.devices[0].model if self.devices else None

    @property
    def memory_total_mb(self) -> float | None:
        sizes = [d.memory_mb * d.count for d in self.devices if d.memory_mb is not None]
        return sum(sizes) if sizes else None


@dataclass(frozen=True)
class GpuMetrics:
    """One heartbeat's worth of GPU readings (fields the probe cannot give stay None)."""

    usage: float | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    temperature: float | None = None

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.usage is not None:
            out["gpu_usage"] = _clamp_percent(self.usage)
        if self.memory_used_mb is not None:
            out["gpu_memory_used_mb"] = self.memory_used_mb
        if self.memory_total_mb is not None:
            out["gpu_memory_total_mb"] = self.memory_total_mb
            if self.memory_used_mb is not None and self.memory_total_mb > 0:
                out["gpu_memory_usage"] = _clamp_percent(
                    100.0 * self.memory_used_mb / self.memory_total_mb
                )
        if self.temperature is not None and -50 <= self.temperature <= 200:
            out["gpu_temperature"] = self.temperature
        return out


def _clamp_percent(value: float) -> float:
    return round(min(100.0, max(0.0, value)), 2)


def run_command(argv: Sequence[str]) -> str | None:
    """Stdout of a command, or None when it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def nvml_devices() -> list[GpuDevice] | None:
    """NVIDIA devices through NVML when the bindings are installed, else None."""
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # NVML raises its own error tree; any failure means "not here"
        return None
    try:
        devices = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            memory = nvml.nvmlDeviceGetMemoryInfo(handle).total / (1024 * 1024)
            devices.append(GpuDevice(model=str(name), memory_mb=float(memory)))
        return devices
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


@dataclass(frozen=True)
class Probes:
    """The machine as detection sees it; tests replace any of these."""

    run: Callable[[Sequence[str]], str | None] = run_command
    system: Callable[[], str] = platform.system
    machine: Callable[[], str] = platform.machine
    path_exists: Callable[[str], bool] = field(default=lambda p: Path(p).exists())
    nvml: Callable[[], list[GpuDevice] | None] = nvml_devices


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None


def capability_score(
    devices: Sequence[GpuDevice], compute_capability: str | None = None
) -> float | None:
    """The documented heuristic (see the module docstring)."""
    total_mb = sum(d.memory_mb * d.count for d in devices if d.memory_mb is not None)
    if total_mb <= 0:
        return None
    factor = 1.0
    major = _float(compute_capability.split(".")[0]) if compute_capability else None
    if major is not None:
        factor = 1.0 if major >= 9 else 0.8 if major >= 8 else 0.6 if major >= 7 else 0.4
    return float(min(10000, round(total_mb / 1024 * 100 * factor)))


def _group(devices: Sequence[GpuDevice]) -> tuple[GpuDevice, ...]:
    """Identical cards collapse into one entry with a count, as the protocol expects."""
    counts: dict[tuple[str, float | None], int] = {}
    for d in devices:
        key = (d.model, d.memory_mb)
        counts[key] = counts.get(key, 0) + d.count
    return tuple(GpuDevice(model=m, memory_mb=mem, count=c) for (m, mem), c in counts.items())


# --- NVIDIA ---------------------------------------------------------------------------


def _detect_nvidia(probes: Probes) -> GpuInfo | None:
    compute: str | None = None
    devices = probes.nvml()
    if not devices:
        devices, compute = _nvidia_smi_devices(probes)
    if not devices:
        return None
    return GpuInfo(
        backend=GpuBackend.CUDA,
        devices=_group(devices),
        capability_score=capability_score(devices, compute),
        compute_capability=compute,
    )


def _nvidia_smi_devices(probes: Probes) -> tuple[list[GpuDevice], str | None]:
    base = ["nvidia-smi", "--format=csv,noheader,nounits"]
    out = probes.run([*base, "--query-gpu=name,memory.total,compute_cap"])
    with_cc = out is not None
    if out is None:
        # Drivers older than 510 do not know compute_cap.
        out = probes.run([*base, "--query-gpu=name,memory.total"])
    if out is None:
        return [], None
    devices: list[GpuDevice] = []
    compute: str | None = None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if not parts or not parts[0]:
            continue
        memory = _float(parts[1]) if len(parts) > 1 else None
        devices.append(GpuDevice(model=parts[0], memory_mb=memory))
        if with_cc and len(parts) > 2 and _float(parts[2]) is not None and compute is None:
            compute = parts[2]
    return devices, compute


def _nvidia_metrics(probes: Probes) -> GpuMetrics | None:
    out = probes.run(
        [
            "nvidia-smi",
            "--format=csv,noheader,nounits",
            "--query-gpu=utilization.gpu,memory.used,memory.total,temperature.gpu",
        ]
    )
    if out is None:
        return None
    rows = [[_float(p) for p in line.split(",")] for line in out.splitlines() if line.strip()]
    rows = [r for r in rows if len(r) >= 4]
    if not rows:
        return None
    usages = [r[0] for r in rows if r[0] is not None]
    used = [r[1] for r in rows if r[1] is not None]
    total = [r[2] for r in rows if r[2] is not None]
    temps = [r[3] for r in rows if r[3] is not None]
    return GpuMetrics(
        usage=sum(usages) / len(usages) if usages else None,
        memory_used_mb=sum(used) if used else None,
        memory_total_mb=sum(total) if total else None,
        temperature=max(temps) if temps else None,
    )


# --- AMD ------------------------------------------------------------------------------


def _rocm_json(probes: Probes, *flags: str) -> dict[str, Any] | None:
    out = probes.run(["rocm-smi", *flags, "--json"])
    if out is None:
        return None
    try:
        data = json.loads(out)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _card_value(card: Any, *needles: str) -> str | None:
    """The first value whose key contains every needle (rocm-smi renames keys across versions)."""
    if not isinstance(card, dict):
        return None
    for key, value in card.items():
        lowered = key.lower()
        if all(n in lowered for n in needles):
            return str(value)
    return None


def _detect_amd(probes: Probes) -> GpuInfo | None:
    names = _rocm_json(probes, "--showproductname")
    if names is None:
        if probes.path_exists("/dev/kfd"):
            # The ROCm kernel driver is there but not its tools: still a ROCm node.
            return GpuInfo(backend=GpuBackend.ROCM, devices=(GpuDevice(model="AMD GPU"),))
        return None
    memory = _rocm_json(probes, "--showmeminfo", "vram") or {}
    devices = []
    for card_id, card in names.items():
        if not card_id.lower().startswith("card"):
            continue
        name = _card_value(card, "card series") or _card_value(card, "card model") or "AMD GPU"
        total_bytes = _float(_card_value(memory.get(card_id), "total memory"))
        devices.append(
            GpuDevice(
                model=name,
                memory_mb=total_bytes / (1024 * 1024) if total_bytes is not None else None,
            )
        )
    if not devices:
        return None
    return GpuInfo(
        backend=GpuBackend.ROCM, devices=_group(devices), capability_score=capability_score(devices)
    )


def _amd_metrics(probes: Probes) -> GpuMetrics | None:
    data = _rocm_json(probes, "--showuse", "--showtemp", "--showmeminfo", "vram")
    if not data:
        return None
    usage, used, total, temps = [], [], [], []
    for card_id, card in data.items():
        if not card_id.lower().startswith("card"):
            continue
        if (u := _float(_card_value(card, "gpu use"))) is not None:
            usage.append(u)
        if (b := _float(_card_value(card, "total used memory"))) is not None:
            used.append(b / (1024 * 1024))
        if (t := _float(_card_value(card, "total memory"))) is not None:
            total.append(t / (1024 * 1024))
        if (c := _float(_card_value(card, "temperature"))) is not None:
            temps.append(c)
    return GpuMetrics(
        usage=sum(usage) / len(usage) if usage else None,
        memory_used_mb=sum(used) if used else None,
        memory_total_mb=sum(total) if total else None,
        temperature=max(temps) if temps else None,
    )


# --- Apple / Windows --------------------------------------------------------------------


def _detect_apple(probes: Probes) -> GpuInfo | None:
    if probes.system() != "Darwin" or probes.machine().lower() not in {"arm64", "aarch64"}:
        return None
    brand = (probes.run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "").strip()
    memsize = _float(probes.run(["sysctl", "-n", "hw.memsize"]))
    device = GpuDevice(
        model=brand or "Apple Silicon",
        # Unified memory: the GPU can address (nearly) all of it.
        memory_mb=memsize / (1024 * 1024) if memsize else None,
    )
    return GpuInfo(
        backend=GpuBackend.METAL, devices=(device,), capability_score=capability_score([device])
    )


def _detect_windows(probes: Probes) -> GpuInfo | None:
    if probes.system() != "Windows":
        return None
    out = probes.run(
        [
            "powershell",
            "-NoProfile",
            "-Command",
            "(Get-CimInstance Win32_VideoController).Name",
        ]
    )
    names = [line.strip() for line in (out or "").splitlines() if line.strip()]
    devices = tuple(GpuDevice(model=n) for n in names) or (GpuDevice(model="DirectML device"),)
    return GpuInfo(backend=GpuBackend.DIRECTML, devices=_group(devices))


def get_gpu_backend(probes: Probes | None = None) -> GpuInfo:
    """Detect this machine's backend and devices (see the module docstring for the order)."""
    probes = probes or Probes()
    for detect in (_detect_nvidia, _detect_amd, _detect_apple, _detect_windows):
        found = detect(probes)
        if found is not None:
            return found
    return GpuInfo(backend=GpuBackend.CPU)


def declared_gpu(backend: GpuBackend, probes: Probes | None = None) -> GpuInfo:
    """An operator-chosen backend: keep what detection knows about the devices if it agrees."""
    detected = get_gpu_backend(probes)
    if detected.backend is backend:
        return detected
    return GpuInfo(backend=backend)


def read_gpu_metrics(backend: GpuBackend, probes: Probes | None = None) -> GpuMetrics | None:
    """Live GPU readings for a heartbeat, where this backend has a tool that gives them."""
    probes = probes or Probes()
    if backend is GpuBackend.CUDA:
        return _nvidia_metrics(probes)
    if backend is GpuBackend.ROCM:
        return _amd_metrics(probes)
    return None
