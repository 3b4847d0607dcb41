"""Settings of the node agent (``llm-router node``) and the simulated node (``sim-node``).

Both read ``LLM_ROUTER_*`` like the router; every field is also a CLI flag, so each one
carries a description that doubles as its ``--help`` text.
"""

from __future__ import annotations

import socket
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llm_router.gpu import GpuBackend
from llm_router.node.runtimes.base import RuntimeKind
from llm_router.protocol import validate_model_id
from llm_router.settings import LogFormat, LogLevel


def _default_machine_name() -> str:
    return socket.gethostname() or "node"


def _strip_url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value


class AgentSettings(BaseSettings):
    """Fields every node agent has, whatever runtime sits behind it."""

    model_config = SettingsConfigDict(env_prefix="LLM_ROUTER_", extra="ignore")

    router_url: str = Field(description="base URL of any router replica (or its load balancer)")
    host: str = Field(default="127.0.0.1", description="address the node API listens on")
    port: int = Field(
        default=8101,
        ge=2,
        le=65535,
        description="port of the node API; registered as node_api_port, runtime_port = port - 1",
    )
    advertise_ip: str | None = Field(
        default=None, description="IP the router uses to reach this node (default: --host)"
    )
    machine_name: str = Field(
        default_factory=_default_machine_name,
        min_length=1,
        max_length=255,
        description="node name; (machine_name, runtime_port) is the node's identity",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="requests this node runs at once (default: what the runtime reports, else 4)",
    )
    node_key: str | None = Field(
        default=None, description="API key of scope node, sent when registering"
    )
    heartbeat_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="heartbeat period used until the router says otherwise at registration",
    )
    register_retry_max_s: float = Field(
        default=10.0, gt=0, le=600, description="longest pause between registration attempts"
    )
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="on SIGTERM, wait at most this long for in-flight requests to finish",
    )
    runtime_timeout_s: float = Field(
        default=600.0, gt=0, description="longest gap a proxied runtime reply may take"
    )
    control_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="longest wait for the router's answer to a registration or removal, and "
        "for the runtime's to a probe (a heartbeat waits at most this, and half its interval)",
    )
    log_level: LogLevel = Field(default="info", description="critical, error, warning, info, debug")
    log_format: LogFormat = Field(default="text", description="text, or json (one object a line)")
    tls_cert: Path | None = Field(
        default=None, description="certificate (PEM) of the node API: serve https (with --tls-key)"
    )
    tls_key: Path | None = Field(default=None, description="private key (PEM) of --tls-cert")
    tls_client_ca: Path | None = Field(
        default=None,
        description="CA (PEM) the router's client certificate must chain to (mTLS; needs TLS)",
    )
    router_ca_file: Path | None = Field(
        default=None,
        description="CA bundle (PEM) to verify an https --router-url (default: system store)",
    )

    _url = field_validator("router_url", mode="after")(_strip_url)

    @model_validator(mode="after")
    def _tls_is_coherent(self) -> AgentSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (mTLS runs over TLS)")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "router_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    @property
    def runtime_port(self) -> int:
        # Wire compatibility: the original protocol puts the node API one port above.
        return self.port - 1

    @property
    def registered_ip(self) -> str:
        if self.advertise_ip:
            return self.advertise_ip
        # A wildcard listen address is not reachable; loopback is the honest default.
        if self.host in {"0.0.0.0", "::", ""}:
            return "127.0.0.1"
        return self.host


class NodeSettings(AgentSettings):
    """The node agent in front of a real runtime (llama.cpp, vLLM, Ollama, MLX server...)."""

    runtime_url: str = Field(description="base URL of the inference runtime on this machine")
    gpu_backend: GpuBackend | None = Field(
        default=None, description="metal, cuda, rocm, directml or cpu (default: detected)"
    )
    catalog: Path | None = Field(
        default=None, description="JSON or YAML model catalog (id, format, platforms)"
    )
    runtime_kind: RuntimeKind = Field(
        default=RuntimeKind.AUTO,
        description="auto, llamacpp, ollama, vllm, sglang, lmstudio, mlx or openai "
        "(auto probes the runtime)",
    )
    runtime_api_key: str | None = Field(
        default=None,
        description="API key the runtime requires (its --api-key), sent on every runtime call",
    )

    _runtime_url = field_validator("runtime_url", mode="after")(_strip_url)


class FailMode(StrEnum):
    """How the simulated runtime misbehaves when told to."""

    NONE = "none"
    HTTP_500 = "500"
    DROP = "drop"
    MIDSTREAM = "midstream"


ModelIds = Annotated[list[str], NoDecode]


class SimNodeSettings(AgentSettings):
    """A node agent in front of the built-in simulated runtime."""

    gpu_backend: GpuBackend = Field(
        default=GpuBackend.CPU, description="backend the simulated node claims"
    )
    models: ModelIds = Field(
        default_factory=lambda: ["sim-model"],
        description="comma-separated model ids the simulated runtime serves",
    )
    catalog: Path | None = Field(
        default=None, description="optional JSON or YAML model catalog (id, format, platforms)"
    )
    ttft_ms: float = Field(
        default=20.0, ge=0, le=600_000, description="time to first token (non-streaming too)"
    )
    tokens_per_s: float = Field(
        default=200.0, gt=0, le=1_000_000, description="generation rate after the first token"
    )
    max_tokens_default: int = Field(
        default=16, ge=1, le=100_000, description="tokens generated when a request sets none"
    )
    fail_mode: FailMode = Field(
        default=FailMode.NONE,
        description="none, 500 (HTTP 500), drop (close before any byte), "
        "midstream (die mid-stream)",
    )
    fail_rate: float = Field(
        default=1.0, ge=0, le=1, description="fraction of requests that fail once failing"
    )
    fail_after_n: int = Field(
        default=0, ge=0, description="serve this many requests normally before failing"
    )
    refuse_families: str = Field(
        default="",
        max_length=200,
        description="comma-separated endpoint families answered 501, as by a runtime built "
        "without them (chat, completions, embeddings, responses, messages, rerank, audio, "
        "speech, images), or single endpoints as 'METHOD /path' (e.g. 'GET "
        "/v1/responses/{response_id}')",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("models", mode="after")
    @classmethod
    def _valid_ids(cls, value: list[str]) -> list[str]:
        for model_id in value:
            try:
                validate_model_id(model_id)
            except ValueError as exc:
                raise ValueError(f"models: {model_id!r} {exc}") from None
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _has_models(self) -> SimNodeSettings:
        if not self.models and self.catalog is None:
            raise ValueError("models: give at least one model id (or a catalog)")
        return self
