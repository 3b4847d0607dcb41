"""The fleet's Lua scripts: loaded once from package files, called through typed wrappers.

Every script is ``lib.lua`` (key builders, scoring, liveness helpers), then the helper
libraries it needs (``_LIBRARIES``), then its own file; each file's header names its KEYS and
ARGV.

Where the store has Redis Functions (Redis 7, and the embedded store), all scripts are loaded
once as one function library, ``llmr_<digest of the sources>``, and run with FCALL: the
library's helpers are then compiled and defined once per load instead of once per call,
which EVALSHA of a script with the helpers prepended does on every call. The digest in the
name lets replicas of two versions share a Redis during a rollout. A store that lost the
library (restarted without persistence) gets it again on the first "function not found";
one that has no Functions, or refuses the load, runs the same sources with EVALSHA, which
falls back to loading on NOSCRIPT (redis-py's Script does). Redis errors are translated
here, at the boundary, into ``StateStoreUnavailable``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from redis import exceptions as redis_errors
from redis.exceptions import NoScriptError

from llm_router.errors import StateStoreUnavailable
from llm_router.state.keys import Keys
from llm_router.state.multiplex import MultiplexedRedis
from llm_router.tenancy import DEFAULT_TENANCY, Tenancy

SCRIPT_NAMES = (
    "register",
    "heartbeat",
    "deregister",
    "drain",
    "prune",
    "list_models",
    "models_stamp",
    "acquire",
    "release",
    "fail",
    "renew",
    "leave_queue",
    "rate_limit",
)

#: Errors that mean "the store is not there right now", as opposed to a bug in a script.
STORE_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
    OSError,
    TimeoutError,
)


#: Helper files a script needs between ``lib.lua`` and its own file, in the order they build
#: on each other (walk.lua uses both others).
_LIBRARIES: dict[str, tuple[str, ...]] = {"acquire": ("affinity", "fair", "walk")}


def _read(part: str) -> str:
    return (resources.files("llm_router.state") / "lua" / f"{part}.lua").read_text()


def _load_source(name: str) -> str:
    return "\n".join(_read(part) for part in ("lib", *_LIBRARIES.get(name, ()), name))


@dataclass(frozen=True)
class FunctionLibrary:
    """Every script as one Redis function library: the helpers once at the top, each
    script's file as the body of its function (KEYS and ARGV are its parameters, and it
    points the helpers at its fleet base before anything else)."""

    source: str
    names: dict[str, str]


def function_library() -> FunctionLibrary:
    # In a fixed order (not a set's): the library's digest must be the same in every replica.
    helpers = list(dict.fromkeys(["lib", *(h for parts in _LIBRARIES.values() for h in parts)]))
    prelude = "\n".join(_read(part) for part in helpers)
    if "local BASE = KEYS[1]\n" not in prelude:
        raise RuntimeError("lib.lua no longer defines BASE from KEYS[1]")
    prelude = prelude.replace("local BASE = KEYS[1]\n", "local BASE\n", 1)
    bodies = [
        f"local function script_{name}(KEYS, ARGV)\nBASE = KEYS[1]\n{_read(name)}\nend"
        for name in SCRIPT_NAMES
    ]
    digest = hashlib.sha1("\n".join([prelude, *bodies]).encode()).hexdigest()[:16]
    names = {name: f"llmr_{digest}_{name}" for name in SCRIPT_NAMES}
    registrations = [
        f"redis.register_function('{names[name]}', script_{name})" for name in SCRIPT_NAMES
    ]
    source = "\n".join([f"#!lua name=llmr_{digest}", prelude, *bodies, *registrations])
    return FunctionLibrary(source, names)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Affinity:
    """What a request's affinity keys asked of the acquire step."""

    keys: tuple[str, ...] = ()
    ttl_ms: int = 0
    #: How much busier (in utilisation units, 1e6 = a whole node) the pinned node may be
    #: than the least loaded candidate and still keep the request.
    margin: int = 0


#: No affinity: no pin is read or written.
NO_AFFINITY = Affinity()


@dataclass(frozen=True)
class Granted:
    lease_id: str
    node_id: str
    ip_address: str
    port: int
    in_flight: int
    max_concurrency: int
    #: "" (no affinity keys), "new", "hit" or "moved:<why>" (unavailable, full, loaded).
    affinity: str = ""
    scheme: str = "http"
    #: The node's current secret (BRIEF §11), presented on the proxied request.
    secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class Queued:
    position: int
    #: The ticket's place tag in the fair order: smaller is served sooner, and it never
    #: changes while the ticket waits (so a replica can tell which of its waiters is first).
    order: int


@dataclass(frozen=True)
class KeyWait:
    """The key has ``in_flight`` requests running across the fleet, its limit: this one
    waits outside the queue (it holds no place there) until one of them ends."""

    in_flight: int


@dataclass(frozen=True)
class Refused:
    reason: Literal[
        "queue_full",
        "shed",
        "key_busy",
        "no_capable",
        "not_found",
        "unsupported",
        "response_gone",
    ]
    queue_length: int = 0


@dataclass(frozen=True)
class Ending:
    """A lease to end, and what the attempt it served taught us about the node."""

    node_id: str
    lease_id: str
    exclude_model: str = ""  # the attempt failed before any byte: cool the pair down
    cooldown_ms: int = 0
    refused_family: str = ""  # the node does not serve this endpoint family
    response_id: str = ""  # the node created this stored response ...
    response_model: str = ""  # ... with this model

    def args(self) -> tuple[str, str, str, int, str, str, str]:
        return (
            self.node_id,
            self.lease_id,
            self.exclude_model,
            self.cooldown_ms,
            self.refused_family,
            self.response_id,
            self.response_model,
        )


AcquireResult = Granted | Queued | KeyWait | Refused


@dataclass(frozen=True)
class RateDecision:
    admitted: bool
    count: int
    retry_after_ms: int = 0


@dataclass(frozen=True)
class ModelEntry:
    id: str
    created: int
    node_count: int
    backends: list[str]


@dataclass(frozen=True)
class ModelList:
    """The fleet's models under ``stamp``, made at ``made_ms`` (Redis clock)."""

    stamp: str
    made_ms: int
    entries: list[ModelEntry]


#: How long a stored response's id keeps pointing at the node that created it.
RESPONSE_TTL_MS = 24 * 3600 * 1000

#: What _fcall_reloading answers when the library is still missing after a reload.
_MISSING = object()

#: Scripts on every proxied request: they take the lean shared connection when there is one.
_HOT_PATH = frozenset({"acquire", "release", "renew"})


@dataclass(frozen=True)
class FailureReport:
    """What a failed attempt on a node tells the fleet (see ``fail.lua``)."""

    model: str
    exclude_now: bool
    cooldown_ms: int
    #: Digest of the request: evidence is counted per different request.
    digest: str = ""
    #: Whether this failure counts as evidence against the node.
    counts: bool = False
    failures_to_exclude: int = 1
    window_ms: int = 0
    #: Node whose evidence from this same request (``digest``) is withdrawn, or "".
    withdraw_from: str = ""


class FleetScripts:
    """Typed calls into the fleet's scripts; one instance per store connection."""

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        fast: MultiplexedRedis | None = None,
        *,
        functions: bool = True,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._base = [keys.base]
        self._scripts = {n: redis.register_script(_load_source(n)) for n in SCRIPT_NAMES}
        self._fast = fast
        self._library = function_library()
        #: None until the first call finds out whether the store takes the library.
        self._functions: bool | None = None if functions else False

    async def _load_library(self, loader: Any = None) -> None:
        # First through the request path's connection where there is one: its timeout bounds
        # an outage (redis-py's client retries). A reload goes through the client whose call
        # found the library missing, so it lands where that client's calls go.
        if loader is None:
            loader = self._fast if self._fast is not None else self._redis
        try:
            await loader.function_load(self._library.source)
            self._functions = True
        except STORE_DOWN_ERRORS:
            raise
        except redis_errors.RedisError as exc:
            # Another replica (or this one, concurrently) loaded it first: just as good.
            self._functions = "already exists" in str(exc)

    def _client_for(self, name: str) -> Any:
        return self._fast if self._fast is not None and name in _HOT_PATH else self._redis

    async def _fcall(self, name: str, args: list[str | int | float]) -> Any:
        function = self._library.names[name]
        if self._fast is not None and name in _HOT_PATH:
            return await self._fast.fcall(function, self._base, args)
        return await self._redis.fcall(function, 1, *self._base, *args)

    async def _fcall_reloading(self, name: str, args: list[str | int | float]) -> Any:
        """FCALL; on "function not found" load the library again and retry once. Returns
        _MISSING when it is still not there (the caller runs the script with EVALSHA)."""
        for attempt in range(2):
            try:
                return await self._fcall(name, args)
            except redis_errors.ResponseError as exc:
                if "function not found" not in str(exc).lower():
                    raise
                if attempt == 0:
                    await self._load_library(self._client_for(name))
                    if not self._functions:
                        break
        return _MISSING

    async def _call(self, name: str, *args: str | int | float) -> Any:
        script = self._scripts[name]
        try:
            if self._functions is None:
                await self._load_library()
            if self._functions:
                result = await self._fcall_reloading(name, list(args))
                if result is not _MISSING:
                    return result
            if self._fast is not None and name in _HOT_PATH:
                with contextlib.suppress(NoScriptError):  # redis-py below loads it
                    return await self._fast.evalsha(script.sha, self._base, list(args))
            return await script(keys=self._base, args=list(args))
        except STORE_DOWN_ERRORS as exc:
            raise StateStoreUnavailable(f"state store unavailable: {exc}") from exc

    @property
    def uses_functions(self) -> bool | None:
        """Whether calls go through the function library (None: not known before a call)."""
        return self._functions

    async def register(
        self,
        *,
        candidate_id: str,
        identity: str,
        token_hash: str,
        fields: dict[str, str],
        executable_models: Sequence[str],
        models: Sequence[str],
        alive_ttl_ms: int,
        key_id: str = "",
        max_identities: int = 0,
    ) -> tuple[str, str]:
        """("registered" | "updated", node id), or ("too_many_identities", how many the
        key holds)."""
        status, node_id = await self._call(
            "register",
            candidate_id,
            identity,
            token_hash,
            json.dumps(fields),
            json.dumps(list(executable_models)),
            json.dumps(list(models)),
            alive_ttl_ms,
            key_id,
            max_identities,
        )
        return _text(status), _text(node_id)

    async def heartbeat(
        self,
        *,
        node_id: str,
        token_hash: str,
        fields: dict[str, str],
        executable_models: Sequence[str] | None,
        models: Sequence[str] | None,
        alive_ttl_ms: int,
        metrics: str = "{}",
        digest: str = "",
        light: bool = False,
        names: str = "",
    ) -> Literal["ok", "not_found", "unauthorized", "full"]:
        """``fields`` are the routing fields, ``metrics`` the display ones packed as one
        JSON object, ``digest`` that of the routing state ("": always apply the fields),
        ``names`` that of which metrics are sent.

        ``light`` sends neither the fields nor the lists: the script applies the beat only if
        it changes nothing, and answers "full" otherwise (then call again without it).
        """
        result = await self._call(
            "heartbeat",
            node_id,
            token_hash,
            "" if light else json.dumps(fields),
            "" if light or executable_models is None else json.dumps(list(executable_models)),
            "" if light or models is None else json.dumps(list(models)),
            alive_ttl_ms,
            digest,
            metrics,
            "1" if light else "",
            names,
        )
        status = _text(result[0])
        assert status in ("ok", "not_found", "unauthorized", "full")
        return status  # type: ignore[return-value]

    async def deregister(
        self, node_id: str, token_hash: str = ""
    ) -> Literal["ok", "not_found", "unauthorized"]:
        status = _text((await self._call("deregister", node_id, token_hash))[0])
        return status  # type: ignore[return-value]

    async def drain(self, node_id: str, *, draining: bool, identity: str = "") -> bool:
        """Drain (or undrain) a node by id, or an identity with no record (``node_id`` "")."""
        result = await self._call("drain", node_id, "1" if draining else "0", identity)
        return _text(result[0]) == "ok"

    async def prune(self, *, forget_ms: int, batch: int = 100) -> tuple[int, int]:
        nodes, models = await self._call("prune", forget_ms, batch)
        return int(nodes), int(models)

    async def list_models(self, *, forget_ms: int) -> ModelList:
        flat = await self._call("list_models", forget_ms)
        entries = []
        for i in range(2, len(flat), 4):
            backends = json.loads(_text(flat[i + 3]))
            entries.append(
                ModelEntry(
                    id=_text(flat[i]),
                    created=int(flat[i + 1]),
                    node_count=int(flat[i + 2]),
                    backends=backends if isinstance(backends, list) else [],
                )
            )
        return ModelList(_text(flat[0]), int(flat[1]), entries)

    async def models_stamp(self, since_ms: int) -> tuple[str, int]:
        """The models stamp, and how many nodes went offline since ``since_ms``."""
        stamp, lapsed = await self._call("models_stamp", since_ms)
        return _text(stamp), int(lapsed)

    async def acquire(
        self,
        *,
        model: str,
        lease_id: str,
        lease_ttl_ms: int,
        ticket: str,
        queue_max: int,
        ticket_ttl_ms: int,
        forget_ms: int,
        family: str = "",
        response_id: str = "",
        affinity: Affinity = NO_AFFINITY,
        avoid: Sequence[str] = (),
        tenancy: Tenancy = DEFAULT_TENANCY,
    ) -> AcquireResult:
        """``avoid``: nodes this request already failed on; never picked again for it."""
        result = await self._call(
            "acquire",
            model,
            lease_id,
            lease_ttl_ms,
            ticket,
            queue_max,
            ticket_ttl_ms,
            forget_ms,
            family,
            response_id,
            json.dumps(list(avoid)) if avoid else "",
            affinity.ttl_ms if affinity.keys else 0,
            affinity.margin,
            tenancy.tenant,
            tenancy.priority,
            tenancy.weight,
            tenancy.key_id if tenancy.max_in_flight else "",
            tenancy.max_in_flight,
            1 if tenancy.refuse_over_limit else 0,
            *affinity.keys,
        )
        kind = _text(result[0])
        if kind == "ok":
            return Granted(
                lease_id=lease_id,
                node_id=_text(result[1]),
                ip_address=_text(result[2]),
                port=int(result[3]),
                in_flight=int(result[4]),
                max_concurrency=int(result[5]),
                affinity=_text(result[6]),
                scheme=_text(result[7]) or "http",
                secret=_text(result[8]),
            )
        if kind == "queued":
            return Queued(position=int(result[1]), order=int(_text(result[2])))
        if kind == "queue_full":
            return Refused("queue_full", queue_length=int(result[1]))
        if kind == "key_busy":
            return Refused("key_busy", queue_length=int(result[1]))
        if kind == "key_wait":
            return KeyWait(in_flight=int(result[1]))
        if kind in ("shed", "no_capable", "not_found", "unsupported", "response_gone"):
            return Refused(kind)  # type: ignore[arg-type]
        raise RuntimeError(f"acquire script returned {result!r}")

    async def release(
        self,
        *,
        node_id: str,
        lease_id: str,
        exclude_model: str = "",
        cooldown_ms: int = 0,
        response_ttl_ms: int = RESPONSE_TTL_MS,
    ) -> int:
        (in_flight,) = await self.release_many(
            [Ending(node_id, lease_id, exclude_model, cooldown_ms)], response_ttl_ms
        )
        return in_flight

    async def release_many(
        self, leases: Sequence[Ending], response_ttl_ms: int = RESPONSE_TTL_MS
    ) -> list[int]:
        """End leases at once; each carries what its attempt taught (see ``Ending``)."""
        args: list[str | int] = [len(leases), response_ttl_ms]
        for lease in leases:
            args += lease.args()
        return [int(n) for n in await self._call("release", *args)]

    async def fail(self, *, node_id: str, lease_id: str, report: FailureReport) -> bool:
        """End a failed attempt's lease and weigh the failure; True if the pair is now
        excluded. With an empty ``node_id`` only ``report.withdraw_from`` is acted on."""
        mode = "now" if report.exclude_now else "evidence" if report.counts else "none"
        _, excluded = await self._call(
            "fail",
            node_id,
            lease_id,
            report.model,
            mode,
            report.cooldown_ms,
            report.digest,
            report.failures_to_exclude,
            report.window_ms,
            report.withdraw_from,
        )
        return bool(int(excluded))

    async def renew(
        self,
        *,
        lease_ttl_ms: int,
        ticket_ttl_ms: int,
        leases: Sequence[tuple[str, str]],
        tickets: Sequence[tuple[str, str]],
    ) -> tuple[int, int]:
        args: list[str | int] = [lease_ttl_ms, ticket_ttl_ms, len(leases)]
        for node_id, lease_id in leases:
            args += [node_id, lease_id]
        for model, ticket in tickets:
            args += [model, ticket]
        renewed_leases, renewed_tickets = await self._call("renew", *args)
        return int(renewed_leases), int(renewed_tickets)

    async def leave_queue(self, *, model: str, ticket: str) -> bool:
        return bool(await self._call("leave_queue", model, ticket))

    async def rate_limit(
        self, *, key_id: str, limit: int, window_ms: int, member: str
    ) -> RateDecision:
        result = await self._call("rate_limit", key_id, limit, window_ms, member)
        if int(result[0]) == 1:
            return RateDecision(True, int(result[1]))
        return RateDecision(False, int(result[1]), int(result[2]))
