"""Wire models of the node protocol (v0): registration, heartbeat, node records.

Field names are those of the original router so existing agents keep working. Strings
that end up inside Redis keys (model ids) or operator output (names) are bounded and free
of control characters, so a hostile body cannot bloat Redis or garble a terminal.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    StringConstraints,
    field_validator,
    model_validator,
)

from llm_router.gpu import GpuBackend

MAX_MODEL_ID_LEN = 256
MAX_MODELS_PER_NODE = 4096
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _no_control_chars(value: str) -> str:
    if _CONTROL_RE.search(value):
        raise ValueError("must not contain control characters")
    return value


def validate_model_id(value: str) -> str:
    """The rule every model id obeys, on the node protocol and on the OpenAI API alike."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_MODEL_ID_LEN:
        raise ValueError(f"must be at most {MAX_MODEL_ID_LEN} characters")
    return _no_control_chars(value)


ModelId = Annotated[str, AfterValidator(validate_model_id)]
ModelList = Annotated[list[ModelId], Field(max_length=MAX_MODELS_PER_NODE)]
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=255), AfterValidator(_no_control_chars)
]
ShortText = Annotated[str, StringConstraints(max_length=255), AfterValidator(_no_control_chars)]
Port = Annotated[int, Field(ge=1, le=65535)]
Percent = Annotated[float, Field(ge=0, le=100)]


class NodeStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    INITIALIZING = "initializing"
    DRAINING = "draining"


class RuntimeStatus(StrEnum):
    """How the runtime behind a node answered its agent (BRIEF §3, §12)."""

    READY = "ready"
    LOADING = "loading"
    UNREACHABLE = "unreachable"
    UNAUTHORIZED = "unauthorized"


class CapacitySource(StrEnum):
    """Where a node's max_concurrency came from."""

    FLAG = "flag"
    RUNTIME = "runtime"
    DEFAULT = "default"


class _Wire(BaseModel):
    # Unknown fields are ignored, not rejected: newer agents may send more than we know.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


class GpuDevice(_Wire):
    model: ShortText
    count: int = Field(default=1, ge=0, le=1024)
    memory: float | None = Field(default=None, ge=0, description="MB")


class RuntimeLoad(_Wire):
    """The runtime's own load figures, as it reports them; every key optional."""

    running: int | None = Field(default=None, ge=0, le=1_000_000)
    waiting: int | None = Field(default=None, ge=0, le=1_000_000)
    kv_cache_usage: float | None = Field(default=None, ge=0, le=1)


class _RuntimeFields(_Wire):
    """Runtime fields a node may send on registration and on every heartbeat."""

    runtime_status: RuntimeStatus | None = None
    runtime_kind: ShortText | None = None
    runtime_version: ShortText | None = None
    runtime_load: RuntimeLoad | None = None
    max_concurrency_source: CapacitySource | None = None

    def runtime_record(self) -> dict[str, Any]:
        """The runtime fields present, ready to store (None = not sent, keep the old value)."""
        out: dict[str, Any] = {}
        for name in ("runtime_status", "runtime_kind", "runtime_version", "max_concurrency_source"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        if self.runtime_load is not None:
            out["runtime_load"] = self.runtime_load.model_dump(exclude_none=True)
        return out


class RegisterRequest(_RuntimeFields):
    machine_name: Name
    ip_address: IPvAnyAddress
    runtime_port: Port
    node_api_port: Port | None = None
    gpu_available: bool | None = None
    gpu_devices: Annotated[list[GpuDevice], Field(max_length=64)] = Field(default_factory=list)
    gpu_count: int | None = Field(default=None, ge=0, le=1024)
    gpu_model: ShortText | None = None
    gpu_backend: GpuBackend | None = None
    executable_models: ModelList | None = None
    models: ModelList | None = None
    max_concurrency: int | None = Field(default=None, ge=1, le=100_000)
    gpu_capability_score: float | None = Field(default=None, ge=0, le=10000)
    loaded_models: ModelList | None = None
    #: How the router reaches the node API: ``https`` for an agent started with TLS.
    scheme: Literal["http", "https"] = "http"

    @field_validator("ip_address", mode="before")
    @classmethod
    def _ip_is_text(cls, value: Any) -> Any:
        # pydantic would read the integer 12 as 0.0.0.12: almost surely a client bug.
        if not isinstance(value, str):
            raise ValueError("must be an IP address string")
        return value

    @property
    def api_port(self) -> int:
        if self.node_api_port is not None:
            return self.node_api_port
        # The original protocol puts the node API one port above the runtime.
        return self.runtime_port + 1 if self.runtime_port < 65535 else self.runtime_port

    def device_names(self) -> list[str]:
        names = [d.model for d in self.gpu_devices if d.count != 0]
        if self.gpu_model:
            names.append(self.gpu_model)
        return names


class ReadyModels(_Wire):
    ready: int = Field(ge=0)
    total: int = Field(ge=0)


class HeartbeatRequest(_RuntimeFields):
    node_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    cpu_usage: Percent = 0.0
    memory_usage: Percent = 0.0
    active_requests: int = Field(default=0, ge=0, le=1_000_000)
    gpu_usage: Percent | None = None
    gpu_memory_usage: Percent | None = None
    gpu_memory_total_mb: float | None = Field(default=None, ge=0)
    gpu_memory_used_mb: float | None = Field(default=None, ge=0)
    gpu_temperature: float | None = Field(default=None, ge=-50, le=200)
    gpu_model_name: ShortText | None = None
    gpu_compute_capability: ShortText | None = None
    gpu_capability_score: float | None = Field(default=None, ge=0, le=10000)
    average_response_time_ms: float | None = Field(default=None, ge=0)
    loaded_models: ModelList | None = None
    executable_models: ModelList | None = None
    gpu_backend: GpuBackend | None = None
    models: ModelList | None = None
    initializing: bool | None = None
    ready_models: ReadyModels | None = None
    max_concurrency: int | None = Field(default=None, ge=1, le=100_000)

    @model_validator(mode="before")
    @classmethod
    def _ready_models_pair(cls, data: Any) -> Any:
        # The original agent sends ready_models as a [ready, total] pair.
        if isinstance(data, dict):
            pair = data.get("ready_models")
            if isinstance(pair, list | tuple) and len(pair) == 2:
                data = {**data, "ready_models": {"ready": pair[0], "total": pair[1]}}
        return data

    def metrics(self) -> dict[str, Any]:
        """Scalar load/GPU metrics to store on the node record (None = not reported)."""
        fields = (
            "cpu_usage",
            "memory_usage",
            "active_requests",
            "gpu_usage",
            "gpu_memory_usage",
            "gpu_memory_total_mb",
            "gpu_memory_used_mb",
            "gpu_temperature",
            "gpu_model_name",
            "gpu_compute_capability",
            "gpu_capability_score",
            "average_response_time_ms",
        )
        out = {f: getattr(self, f) for f in fields if getattr(self, f) is not None}
        if self.ready_models is not None:
            out["ready_models"] = [self.ready_models.ready, self.ready_models.total]
        return out


class RegisterResponse(_Wire):
    node_id: str
    status: str
    node_api_port: int
    node_token: str
    node_secret: str
    heartbeat_interval_s: float
