"""The node registry: registration, heartbeats and the fleet's read views, over Redis.

Writes go through one Lua script each (atomic, timed by the Redis clock); reads that only
inform operators (lists, single records) are plain pipelined reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from llm_router.errors import Forbidden, StateStoreUnavailable
from llm_router.gpu import GpuBackend, infer_gpu_backend
from llm_router.protocol import HeartbeatRequest, NodeStatus, RegisterRequest, RuntimeStatus
from llm_router.state.beat_split import split_beat
from llm_router.state.keys import Keys
from llm_router.state.scripts import STORE_DOWN_ERRORS, FleetScripts, ModelEntry, ModelList

# Fields stored as JSON on the node hash; every other field is a plain string.
_JSON_FIELDS = frozenset(
    {"gpu_devices", "models", "executable_models", "loaded_models", "ready_models", "runtime_load"}
)
_OBJECT_FIELDS = frozenset({"runtime_load"})
_INT_FIELDS = frozenset(
    {"runtime_port", "node_api_port", "gpu_count", "max_concurrency", "active_requests"}
)
_FLOAT_FIELDS = frozenset(
    {
        "cpu_usage",
        "memory_usage",
        "gpu_usage",
        "gpu_memory_usage",
        "gpu_memory_total_mb",
        "gpu_memory_used_mb",
        "gpu_temperature",
        "gpu_capability_score",
        "average_response_time_ms",
    }
)
_BOOL_FIELDS = frozenset({"gpu_available", "initializing", "draining"})
_TIME_FIELDS = frozenset({"registered_at", "last_seen"})
# Kept on the node hash for the scripts, never shown: the token's digest, the backend
# /v1/models last listed for the node (a change moves models:version), and the secret the
# router presents to the node (stored as is: every replica must be able to send it).
_HIDDEN_FIELDS = frozenset(
    {
        "token_hash",
        "listed_backend",
        "listed_serving",
        "node_secret",
        # What the heartbeat compares against to tell a change (state/lua/lib.lua).
        "floor_base",
        "routable",
        "known_at",
        "excl_next",
        # The liveness deadline, copied from nodes:alive for the request path's one read.
        "alive_until",
        # The last beat's display metrics (decoded into the record's own fields) and the
        # digest of its routing state, stamped with the last_seen written with it and the token.
        "metrics",
        "metrics_kept",
        "state_digest",
    }
)


_TOKEN_BYTES = 32
#: Nodes whose last digest a replica remembers (≈ 100 B each).
_DIGESTS_HELD = 100_000
#: What ``new_token`` and the register script's ids look like: anything else is refused
#: without a Redis round trip (a forged heartbeat should cost the fleet nothing).
_TOKEN_RE = re.compile(r"^nt_[A-Za-z0-9_-]{43}$")
_NODE_ID_RE = re.compile(r"^[0-9a-f]{16}$")


def could_be_token(token: str) -> bool:
    return _TOKEN_RE.match(token) is not None


def could_be_node_id(node_id: str) -> bool:
    return _NODE_ID_RE.match(node_id) is not None


def new_node_id() -> str:
    return secrets.token_hex(8)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "nt_" + secrets.token_urlsafe(_TOKEN_BYTES)


def new_node_secret() -> str:
    """What the router presents to a node (BRIEF §11); a new one at every registration."""
    return "ns_" + secrets.token_urlsafe(_TOKEN_BYTES)


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_field(name: str, raw: str) -> Any:
    try:
        if name in _JSON_FIELDS:
            value = json.loads(raw)
            # An empty Lua table encodes as {}: it is an empty list here, but for an object.
            return [] if value == {} and name not in _OBJECT_FIELDS else value
        if name in _INT_FIELDS:
            return int(float(raw))
        if name in _FLOAT_FIELDS:
            return float(raw)
        if name in _BOOL_FIELDS:
            return raw == "1"
        if name in _TIME_FIELDS:
            return int(raw) / 1000.0
    except ValueError:
        return raw
    return raw


def _packed(raw: str | None) -> dict[str, str]:
    """A JSON object of stored strings (the metrics fields), {} when absent or unreadable."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Registration:
    node_id: str
    created: bool
    token: str
    secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class RegistryConfig:
    """Clocks (ms) and defaults the registry applies."""

    alive_ttl_ms: int
    forget_ms: int
    default_max_concurrency: int = 4


class NodeRegistry:
    def __init__(
        self, redis: Any, keys: Keys, scripts: FleetScripts, timing: RegistryConfig
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._scripts = scripts
        self._timing = timing
        self._models: ModelList | None = None
        self._models_refresh = asyncio.Lock()
        #: node id -> the routing-state digest of the last beat this replica applied for it.
        self._digests: dict[str, str] = {}

    async def register(
        self,
        request: RegisterRequest,
        *,
        executable_models: Sequence[str],
        gpu_backend: str | None,
        key_id: str = "",
        max_identities: int = 0,
    ) -> Registration:
        """Store a node; ``executable_models`` and the backend are already resolved.

        ``key_id`` names the node key registering (``""``: unbounded, for admin keys and
        open scopes); it may hold at most ``max_identities`` identities at once.
        """
        backend = gpu_backend or request.gpu_backend or infer_gpu_backend(request.device_names())
        installed = list(dict.fromkeys([*(request.models or []), *executable_models]))
        gpu_available = request.gpu_available
        if gpu_available is None:
            gpu_available = bool(request.device_names())
        fields: dict[str, Any] = {
            "machine_name": request.machine_name,
            "ip_address": str(request.ip_address),
            "runtime_port": request.runtime_port,
            "node_api_port": request.api_port,
            "runtime_version": "",
            "gpu_available": gpu_available,
            "gpu_devices": [d.model_dump(exclude_none=True) for d in request.gpu_devices],
            "gpu_count": request.gpu_count
            if request.gpu_count is not None
            else sum(d.count for d in request.gpu_devices),
            "gpu_model": request.gpu_model or "",
            "gpu_backend": str(backend),
            # Installed models are mostly the executable ones: then the record keeps one
            # copy ("" asks the script to drop the field; readers fall back).
            "models": installed if installed != list(dict.fromkeys(executable_models)) else "",
            "max_concurrency": request.max_concurrency or self._timing.default_max_concurrency,
            "initializing": False,
            "scheme": request.scheme,
        }
        if request.gpu_capability_score is not None:
            fields["gpu_capability_score"] = request.gpu_capability_score
        if request.loaded_models is not None:
            fields["loaded_models"] = list(dict.fromkeys(request.loaded_models))
        fields.update(request.runtime_record())
        token = new_token()
        secret = new_node_secret()
        fields["node_secret"] = secret
        status, node_id = await self._scripts.register(
            candidate_id=new_node_id(),
            identity=f"{request.machine_name}:{request.runtime_port}",
            token_hash=hash_token(token),
            fields={k: _encode(v) for k, v in fields.items()},
            executable_models=list(dict.fromkeys(executable_models)),
            models=installed,
            alive_ttl_ms=self._timing.alive_ttl_ms,
            key_id=key_id,
            max_identities=max_identities,
        )
        if status == "too_many_identities":
            raise Forbidden(
                f"This node key already holds {node_id} node identities (the most it may); "
                "remove one, or register with another key"
            )
        return Registration(
            node_id=node_id, created=status == "registered", token=token, secret=secret
        )

    async def heartbeat(
        self, beat: HeartbeatRequest, token: str
    ) -> Literal["ok", "not_found", "unauthorized"]:
        # Checked in the order the script checks them, so the answer is the same.
        if not could_be_node_id(beat.node_id):
            return "not_found"
        if not could_be_token(token):
            return "unauthorized"
        fields: dict[str, Any] = {**beat.metrics(), **beat.runtime_record()}
        if beat.loaded_models is not None:
            fields["loaded_models"] = beat.loaded_models
        if beat.gpu_backend is not None:
            fields["gpu_backend"] = beat.gpu_backend.value
        if beat.initializing is not None:
            fields["initializing"] = beat.initializing
        if beat.max_concurrency is not None:
            fields["max_concurrency"] = beat.max_concurrency
        installed = None
        if beat.models is not None:
            installed = list(dict.fromkeys(beat.models))
            fields["models"] = installed
        executable = None
        if beat.executable_models is not None:
            executable = list(dict.fromkeys(beat.executable_models))
            if installed == executable:
                fields["models"] = ""  # one copy: the executable set (see register)
        split = split_beat({k: _encode(v) for k, v in fields.items()}, executable)
        # The lists are most of a beat's bytes: when this replica last sent the same digest
        # for the node, a light call tries the unchanged beat without them.
        light = self._digests.get(beat.node_id) == split.digest
        while True:
            outcome = await self._scripts.heartbeat(
                node_id=beat.node_id,
                token_hash=hash_token(token),
                fields=split.fields,
                metrics=split.metrics,
                digest=split.digest,
                names=split.names,
                executable_models=executable,
                models=installed,
                alive_ttl_ms=self._timing.alive_ttl_ms,
                light=light,
            )
            if outcome != "full":
                break
            light = False
        if outcome == "ok":
            self._remember(beat.node_id, split.digest)
        return outcome

    def _remember(self, node_id: str, digest: str) -> None:
        if len(self._digests) >= _DIGESTS_HELD and node_id not in self._digests:
            self._digests.clear()  # a hint only: forgetting costs one full call per node
        self._digests[node_id] = digest

    async def deregister(
        self, node_id: str, token: str | None = None
    ) -> Literal["ok", "not_found", "unauthorized"]:
        return await self._scripts.deregister(node_id, hash_token(token) if token else "")

    async def drain(self, node_id: str, *, draining: bool = True) -> bool:
        return await self._scripts.drain(node_id, draining=draining)

    async def drain_identity(self, identity: str, *, draining: bool = True) -> bool:
        """Drain ``machine_name:runtime_port`` before (or after) it has a record."""
        return await self._scripts.drain("", draining=draining, identity=identity)

    async def drained_identities(self) -> dict[str, float]:
        """Identities an admin drained → when (s): they stay out until undrained."""
        raw = await self._guard(self._redis.hgetall(self._keys.nodes_drained))
        return {_text(k): int(_text(v)) / 1000.0 for k, v in raw.items()}

    async def prune(self) -> tuple[int, int]:
        return await self._scripts.prune(forget_ms=self._timing.forget_ms)

    async def list_models(self) -> list[ModelEntry]:
        """The fleet's models, from this replica's copy while it is current (the fleet's
        stamp has not moved and no node went offline since it was made): one O(log n)
        script call, however many nodes and models the fleet holds."""
        seen = self._models
        stamp, lapsed = await self._scripts.models_stamp(seen.made_ms if seen else 0)
        if seen is not None and seen.stamp == stamp and lapsed == 0:
            return seen.entries
        async with self._models_refresh:
            if self._models is not seen and self._models is not None:
                return self._models.entries  # refreshed while this caller waited
            self._models = await self._scripts.list_models(forget_ms=self._timing.forget_ms)
            return self._models.entries

    # --- reads -------------------------------------------------------------------------

    async def _now_ms(self) -> int:
        seconds, micros = await self._guard(self._redis.time())
        return int(seconds) * 1000 + int(micros) // 1000

    async def _guard(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except STORE_DOWN_ERRORS as exc:
            raise StateStoreUnavailable(f"state store unavailable: {exc}") from exc

    async def _records(self, node_ids: Sequence[str], now_ms: int) -> list[dict[str, Any]]:
        if not node_ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for node_id in node_ids:
            pipe.hgetall(self._keys.node(node_id))
            pipe.get(self._keys.node_metrics(node_id))
            pipe.zscore(self._keys.nodes_alive, node_id)
            pipe.zcount(self._keys.leases(node_id), now_ms + 1, "+inf")
            pipe.zrangebyscore(self._keys.excluded(node_id), now_ms + 1, "+inf", withscores=True)
        raw = await self._guard(pipe.execute())
        records = []
        for i, _node_id in enumerate(node_ids):
            fields, metrics, deadline, in_flight, excluded = raw[5 * i : 5 * i + 5]
            if not fields:
                continue
            if metrics is not None:
                fields = {**fields, "metrics": metrics}
            records.append(self._record(fields, deadline, in_flight, excluded, now_ms))
        return records

    @staticmethod
    def _fields(raw: dict[Any, Any]) -> dict[str, str]:
        """The node hash as strings, the metrics fields laid out as the fields they hold.

        The metrics (over those kept from earlier beats) are the newest values when the
        digest's stamp is the stored last_seen (the heartbeat script wrote both); otherwise
        a writer that stores each metric as its own field (an older replica's script) came
        last, and its fields win.
        """
        fields = {_text(k): _text(v) for k, v in raw.items()}
        metrics = {**_packed(fields.get("metrics_kept")), **_packed(fields.get("metrics"))}
        stamp = fields.get("state_digest", "").split("@")
        if len(stamp) > 1 and stamp[1] == fields.get("last_seen"):
            return {**fields, **metrics}
        return {**metrics, **fields}

    def _record(
        self,
        fields: dict[Any, Any],
        deadline: float | None,
        in_flight: int,
        excluded: list[tuple[Any, float]],
        now_ms: int,
    ) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for name, text in self._fields(fields).items():
            if name in _HIDDEN_FIELDS:
                continue
            record[name] = _decode_field(name, text)
        record.setdefault("executable_models", [])
        # No installed list stored: it is the executable one (kept once, not twice).
        record.setdefault("models", record["executable_models"])
        record.setdefault("loaded_models", [])
        record["draining"] = bool(record.get("draining", False))
        record["in_flight"] = int(in_flight)
        record["alive_until"] = (deadline or 0) / 1000.0
        record["excluded_models"] = {
            (m.decode() if isinstance(m, bytes) else m): until / 1000.0 for m, until in excluded
        }
        if deadline is None or deadline <= now_ms:
            status = NodeStatus.OFFLINE
        elif record["draining"]:
            status = NodeStatus.DRAINING
        elif record.get("initializing"):
            status = NodeStatus.INITIALIZING
        else:
            status = NodeStatus.ONLINE
        record["status"] = status.value
        return record

    async def list_nodes(self) -> list[dict[str, Any]]:
        now = await self._now_ms()
        horizon = now - self._timing.forget_ms
        raw_ids = await self._guard(
            self._redis.zrangebyscore(self._keys.nodes_alive, horizon, "+inf")
        )
        ids = sorted(i.decode() if isinstance(i, bytes) else i for i in raw_ids)
        return await self._records(ids, now)

    async def get_node(self, node_id: str) -> dict[str, Any] | None:
        now = await self._now_ms()
        records = await self._records([node_id], now)
        return records[0] if records else None

    async def get_nodes_for_model(self, model: str) -> list[dict[str, Any]]:
        """Live nodes that can take ``model`` now: not draining, initializing or excluded."""
        now = await self._now_ms()
        # Members are who joined the set (lapsed nodes leave it lazily); liveness is each
        # record's deadline in nodes:alive, checked below.
        raw_ids = await self._guard(self._redis.zrange(self._keys.model_nodes(model), 0, -1))
        ids = sorted(i.decode() if isinstance(i, bytes) else i for i in raw_ids)
        return [
            r
            for r in await self._records(ids, now)
            if r["status"] == NodeStatus.ONLINE
            and r.get("runtime_status", RuntimeStatus.READY) == RuntimeStatus.READY
            and model in r["executable_models"]
            and model not in r["excluded_models"]
        ]


def resolve_backend(request: RegisterRequest, reported: str | None) -> str:
    """The backend to store: what the node said, else what its devices suggest."""
    if request.gpu_backend is not None:
        return request.gpu_backend.value
    if reported:
        try:
            return GpuBackend(reported.lower()).value
        except ValueError:
            pass
    return str(infer_gpu_backend(request.device_names()))
