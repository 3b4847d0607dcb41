"""Configuration: one pydantic-settings class per process kind, read from ``LLM_ROUTER_*``.

Every field is also a CLI flag (``cli.py`` derives the flags from these classes), so the
environment and the command line can never drift apart.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _split_keys(value: object) -> object:
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    return value


def _printable_ascii(keys: list[str]) -> list[str]:
    # Headers arrive as latin-1 and keys are digested as UTF-8: a key outside printable
    # ASCII could never match what a client sends, so it is refused here, at start-up.
    for key in keys:
        if not (key.isascii() and key.isprintable()) or " " in key:
            raise ValueError("API keys must be printable ASCII without spaces")
    return keys


KeyList = Annotated[list[str], NoDecode, AfterValidator(_printable_ascii)]


def _known_level(value: str) -> str:
    level = value.lower()
    if level not in {"critical", "error", "warning", "info", "debug"}:
        raise ValueError("log_level must be one of critical, error, warning, info, debug")
    return level


#: How often a ``serve --workers`` worker's event loop writes its liveness beat.
WORKER_BEAT_S = 1.0
#: The shortest hang bound accepted: several beats, so one late beat never kills a worker.
MIN_WORKER_HANG_TIMEOUT_S = 3 * WORKER_BEAT_S

#: A logging level name, any case; every process kind's settings use it.
LogLevel = Annotated[str, AfterValidator(_known_level)]
#: ``json``: every log line of the process (ours, uvicorn's, aiohttp's) is one JSON object.
LogFormat = Literal["text", "json"]


class RouterSettings(BaseSettings):
    """Settings of one router replica (``llm-router serve``)."""

    model_config = SettingsConfigDict(env_prefix="LLM_ROUTER_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="redis://, rediss://, unix://, redis[s]+sentinel://, redis[s]+cluster://; "
        "unset → embedded in-process store (one replica only)",
    )
    key_prefix: str = Field(default="llmr", description="fleet prefix, kept inside a hash tag")
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8080, ge=1, le=65535, description="port to listen on")
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description="processes serving this port, each a full replica (one per core the "
        "replica is given; more than 1 needs a Redis URL)",
    )
    worker_hang_timeout_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="with workers > 1: a worker whose event loop has not run for this long "
        "is killed and replaced (0 = never)",
    )

    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=3600)
    node_timeout_s: float = Field(default=10.0, gt=0, le=86400)
    node_forget_s: float = Field(default=86400.0, gt=0, description="forget offline nodes after")
    queue_max: int = Field(default=256, ge=0, le=1_000_000)
    queue_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    queue_ticket_ttl_s: float = Field(
        default=3.0, gt=0, le=60, description="a waiter's ticket dies this long after its replica"
    )
    lease_ttl_s: float = Field(default=15.0, gt=0, le=3600)
    exclusion_cooldown_s: float = Field(default=30.0, ge=0, le=86400)
    exclusion_failures: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="different requests failing on a (node, model) within "
        "exclusion_window_s that exclude it (an unreachable node is excluded at once)",
    )
    exclusion_window_s: float = Field(default=30.0, gt=0, le=86400)
    max_attempts: int = Field(default=3, ge=1, le=16)
    default_max_concurrency: int = Field(default=4, ge=1, le=100_000)
    require_gpu: bool = False

    affinity: bool = Field(
        default=True, description="send a conversation's turns back to the node that has its cache"
    )
    affinity_ttl_s: float = Field(
        default=600.0, gt=0, le=86400, description="how long a conversation's pin outlives its turn"
    )
    affinity_margin: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="how much busier (fraction of its slots) a pinned node may be than the "
        "least loaded one and keep the conversation",
    )

    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP connect to a node")
    first_byte_timeout_s: float = Field(
        default=120.0, gt=0, description="wait for a node's headers"
    )
    idle_timeout_s: float = Field(default=120.0, gt=0, description="max gap between stream chunks")
    response_body_timeout_s: float = Field(
        default=30.0, gt=0, description="read a whole (non-streamed) answer after its headers"
    )
    max_response_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="bigger non-streamed answers fail"
    )
    redis_socket_timeout_s: float = Field(default=2.0, gt=0, le=60)
    model_fetch_timeout_s: float = Field(default=5.0, gt=0, le=60)
    model_fetch_max_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="a node's /v1/models at registration"
    )
    shutdown_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="on SIGTERM, wait this long for open requests"
    )
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024, description="request line + headers"
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, description="a request's head must arrive within this"
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, le=86400, description="a request's body must arrive within this"
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, le=3600, description="close a connection idle between requests"
    )
    max_models_per_node: int = Field(
        default=1024, ge=1, le=4096, description="models one node may advertise"
    )
    max_identities_per_node_key: int = Field(
        default=64, ge=1, le=100_000, description="machine:port identities one node key may hold"
    )
    max_connections: int = Field(
        default=1024, ge=1, le=1_000_000, description="open client connections per replica"
    )

    api_keys: KeyList = Field(default_factory=list, description="comma-separated, scope api")
    node_keys: KeyList = Field(default_factory=list, description="comma-separated, scope node")
    admin_keys: KeyList = Field(default_factory=list, description="comma-separated, scope admin")
    auth_disabled: bool = Field(default=False, description="run with open scopes (development)")
    key_refresh_s: float = Field(
        default=2.0, gt=0, le=300, description="reload keys managed in Redis (revocation delay)"
    )
    rate_limit_per_minute: int = Field(
        default=0, ge=0, description="requests per minute per API key, all replicas (0 = off)"
    )

    node_ca_file: str | None = Field(
        default=None,
        description="CA bundle (PEM) that https nodes' certificates must chain to "
        "(unset → the system store)",
    )
    node_client_cert: str | None = Field(
        default=None, description="client certificate (PEM) presented to https nodes (mTLS)"
    )
    node_client_key: str | None = Field(
        default=None, description="private key (PEM) of node_client_cert"
    )

    log_level: LogLevel = Field(default="info")
    log_format: LogFormat = Field(default="text", description="text, or json (one object a line)")
    access_log: bool = Field(default=False, description="per-request log lines (costs throughput)")

    _split = field_validator("api_keys", "node_keys", "admin_keys", mode="before")(_split_keys)

    @field_validator("key_prefix")
    @classmethod
    def _prefix_is_plain(cls, value: str) -> str:
        if not _PREFIX_RE.match(value):
            raise ValueError("key_prefix must be 1-64 characters of [A-Za-z0-9_.-]")
        return value

    @model_validator(mode="after")
    def _timeouts_are_coherent(self) -> RouterSettings:
        if self.node_timeout_s <= self.heartbeat_interval_s:
            raise ValueError(
                "node_timeout_s must be greater than heartbeat_interval_s "
                f"({self.node_timeout_s} <= {self.heartbeat_interval_s}): every node would flap"
            )
        return self

    @field_validator("worker_hang_timeout_s")
    @classmethod
    def _hang_bound_spans_beats(cls, value: float) -> float:
        if 0 < value < MIN_WORKER_HANG_TIMEOUT_S:
            raise ValueError(
                f"worker_hang_timeout_s must be 0 (off) or at least {MIN_WORKER_HANG_TIMEOUT_S:g}: "
                f"a worker's loop beats every {WORKER_BEAT_S:g} s, and a shorter bound would "
                "kill a healthy worker on one late beat"
            )
        return value

    @model_validator(mode="after")
    def _client_cert_has_key(self) -> RouterSettings:
        if bool(self.node_client_cert) != bool(self.node_client_key):
            raise ValueError("node_client_cert and node_client_key must be set together")
        return self

    @property
    def embedded(self) -> bool:
        return not self.redis_url
