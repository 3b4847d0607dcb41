"""GPU backends, model platforms and formats, and the compatibility rules between them.

Shared by the router (``infer_gpu_backend`` at registration) and the node agent
(``is_compatible`` / ``list_executable_models`` when it builds ``executable_models``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class GpuBackend(StrEnum):
    """The compute backend a node executes models on (lower-case on the wire)."""

    METAL = "metal"
    CUDA = "cuda"
    ROCM = "rocm"
    DIRECTML = "directml"
    CPU = "cpu"


#: Stored for a node whose GPU vendor we could not recognise. Never accepted on the wire as
#: ``gpu_backend``: it only ever comes out of ``infer_gpu_backend``.
UNKNOWN_BACKEND = "unknown"


class Platform(StrEnum):
    """Platform strings a model may declare in a catalog."""

    MACOS_METAL = "macos-metal"
    LINUX_CUDA = "linux-cuda"
    WINDOWS_CUDA = "windows-cuda"
    WINDOWS_DIRECTML = "windows-directml"
    LINUX_ROCM = "linux-rocm"
    CPU = "cpu"


PLATFORM_BACKEND: Mapping[Platform, GpuBackend] = {
    Platform.MACOS_METAL: GpuBackend.METAL,
    Platform.LINUX_CUDA: GpuBackend.CUDA,
    Platform.WINDOWS_CUDA: GpuBackend.CUDA,
    Platform.WINDOWS_DIRECTML: GpuBackend.DIRECTML,
    Platform.LINUX_ROCM: GpuBackend.ROCM,
    Platform.CPU: GpuBackend.CPU,
}


class ModelFormat(StrEnum):
    GGUF = "gguf"
    MLX = "mlx"
    COREML = "coreml"
    SAFETENSORS = "safetensors"
    AWQ = "awq"
    GPTQ = "gptq"
    FP8 = "fp8"
    TENSORRT = "tensorrt"
    ONNX_DIRECTML = "onnx-directml"


_ALL = frozenset(GpuBackend)

#: Backends a format runs on when the model declares no platforms. Plain safetensors is
#: absent on purpose: without a quantisation hint we cannot say, so it counts as unknown.
FORMAT_DEFAULT_BACKENDS: Mapping[ModelFormat, frozenset[GpuBackend]] = {
    ModelFormat.GGUF: _ALL,
    ModelFormat.MLX: frozenset({GpuBackend.METAL}),
    ModelFormat.COREML: frozenset({GpuBackend.METAL}),
    ModelFormat.TENSORRT: frozenset({GpuBackend.CUDA}),
    ModelFormat.FP8: frozenset({GpuBackend.CUDA}),
    ModelFormat.AWQ: frozenset({GpuBackend.CUDA, GpuBackend.ROCM}),
    ModelFormat.GPTQ: frozenset({GpuBackend.CUDA, GpuBackend.ROCM}),
    ModelFormat.ONNX_DIRECTML: frozenset({GpuBackend.DIRECTML}),
}

# Order matters: the first marker found in a model id names its format. Quantisation
# markers come before the container ("...-AWQ.safetensors" is AWQ), "onnx" needs the
# DirectML flavour to mean anything for placement.
_ID_FORMAT_MARKERS: tuple[tuple[str, ModelFormat], ...] = (
    ("gguf", ModelFormat.GGUF),
    ("mlx", ModelFormat.MLX),
    ("coreml", ModelFormat.COREML),
    ("awq", ModelFormat.AWQ),
    ("gptq", ModelFormat.GPTQ),
    ("fp8", ModelFormat.FP8),
    ("tensorrt", ModelFormat.TENSORRT),
    ("trt-llm", ModelFormat.TENSORRT),
    ("onnx-directml", ModelFormat.ONNX_DIRECTML),
    ("directml", ModelFormat.ONNX_DIRECTML),
)


@dataclass(frozen=True)
class ModelSpec:
    """What we know about one installed model: its id and, if known, format and platforms."""

    id: str
    format: ModelFormat | None = None
    quantization: str | None = None
    platforms: frozenset[Platform] = field(default_factory=frozenset)


def format_from_model_id(model_id: str) -> ModelFormat | None:
    lowered = model_id.lower()
    for marker, fmt in _ID_FORMAT_MARKERS:
        if marker in lowered:
            return fmt
    return None


def parse_format(value: str | None) -> ModelFormat | None:
    """A runtime's or catalog's format name → ModelFormat (None when we do not know it)."""
    if not value:
        return None
    try:
        return ModelFormat(value.strip().lower())
    except ValueError:
        return format_from_model_id(value)


def compatible_backends(spec: ModelSpec) -> frozenset[GpuBackend] | None:
    """Backends the model can run on; None means "unknown, trust the runtime"."""
    if spec.platforms:
        return frozenset(PLATFORM_BACKEND[p] for p in spec.platforms)
    fmt = spec.format or format_from_model_id(spec.id)
    if fmt is None:
        return None
    return FORMAT_DEFAULT_BACKENDS.get(fmt)


def is_compatible(spec: ModelSpec, backend: GpuBackend | str) -> bool:
    """True when a node on ``backend`` can execute the model (BRIEF §4)."""
    backends = compatible_backends(spec)
    if backends is None:
        # The runtime lists it and nothing says otherwise: it runs there.
        return True
    return str(backend) in {b.value for b in backends}


def list_executable_models(specs: Iterable[ModelSpec], backend: GpuBackend | str) -> list[str]:
    return [s.id for s in specs if is_compatible(s, backend)]


# --- backend inference from device names (router side, at registration) -------------

_CUDA_RE = re.compile(
    r"nvidia|geforce|\brtx\b|\bgtx\b|tesla|quadro|titan|jetson|"
    # Datacentre parts often reported without the vendor name: list them, since a bare
    # letter+digits pattern would also match other vendors' cards (Intel Arc A770).
    r"\b(?:a(?:2|10g?|16|30|40|100|800)|h(?:20|100|200|800)|l(?:4|20|40s?)|b(?:100|200)|"
    r"gh200|gb200|v100|p100|p40|t4)\b",
    re.IGNORECASE,
)
_OTHER_VENDOR_RE = re.compile(r"\bintel\b|\barc\b|qualcomm|adreno|mali|moore ?threads", re.I)
_METAL_RE = re.compile(r"apple|\bm[1-9]\b|\bm[1-9] (?:pro|max|ultra)\b", re.IGNORECASE)
_ROCM_RE = re.compile(r"\bamd\b|radeon|instinct|\bmi\d{2,3}[a-z]?\b|\brx ?\d{3,4}", re.IGNORECASE)
_DIRECTML_RE = re.compile(r"directml", re.IGNORECASE)


def infer_gpu_backend(device_names: Iterable[str | None]) -> GpuBackend | str:
    """Guess a node's backend from its GPU names.

    No names at all → cpu (no GPU). Names we cannot place → ``"unknown"``, so the node is
    still registered (its runtime decides what it serves) but an operator can see why.
    """
    names = [n.strip() for n in device_names if n and n.strip()]
    if not names:
        return GpuBackend.CPU
    for name in names:
        if _OTHER_VENDOR_RE.search(name):
            continue
        # Apple first: "Apple M2 Max" must not be read as some "M2"-named datacentre part.
        if _METAL_RE.search(name):
            return GpuBackend.METAL
        if _ROCM_RE.search(name):
            return GpuBackend.ROCM
        if _CUDA_RE.search(name):
            return GpuBackend.CUDA
        if _DIRECTML_RE.search(name):
            return GpuBackend.DIRECTML
    return UNKNOWN_BACKEND
