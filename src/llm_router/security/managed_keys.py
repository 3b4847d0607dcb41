"""API keys kept in the fleet's Redis, and the snapshot each replica authenticates with.

Redis holds one hash, ``{prefix}:apikeys``: ``sha256(key)`` (hex) → JSON
``{"scope", "name", "created", "rate_limit_per_minute"?, "tenant"?, "priority"?, "weight"?,
"max_in_flight"?, "refuse_over_limit"?}``. The key itself is shown once,
when it is created, and never stored. Replicas do not read Redis per request: a
``KeyRefresher`` reloads the whole hash every ``key_refresh_s`` and swaps it into the
``KeyRing``; a revoked key therefore stops working on every replica within that period.
When Redis is unreachable the last snapshot stays in force (the router cannot route
without Redis anyway, and dropping every key would turn an outage into a lock-out).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from llm_router.auth import KeyRing, ManagedKey, Scope, digest, key_id_of
from llm_router.settings import RouterSettings
from llm_router.state.connect import open_store
from llm_router.state.keys import Keys
from llm_router.tenancy import DEFAULT_PRIORITY, MAX_PRIORITY, MAX_WEIGHT

log = logging.getLogger(__name__)

_MAX_NAME_LEN = 128


class KeyNotFound(LookupError):
    """No managed key has that id (or the id prefix is ambiguous)."""


@dataclass(frozen=True)
class KeyListing:
    """What ``keys list`` shows: everything but the key."""

    key_id: str
    scope: Scope
    name: str
    created: int
    rate_limit_per_minute: int | None
    tenant: str = ""
    priority: int = DEFAULT_PRIORITY
    weight: int = 1
    max_in_flight: int = 0
    refuse_over_limit: bool = False


def _listing(key_digest: bytes, key: ManagedKey) -> KeyListing:
    return KeyListing(
        key_id_of(key_digest),
        key.scope,
        key.name,
        key.created,
        key.rate_limit_per_minute,
        key.tenant,
        key.priority,
        key.weight,
        key.max_in_flight,
        key.refuse_over_limit,
    )


def _queueing_problem(key: ManagedKey) -> str | None:
    if len(key.tenant) > _MAX_NAME_LEN or any(not c.isprintable() or c == " " for c in key.tenant):
        return f"tenant must be at most {_MAX_NAME_LEN} printable characters without spaces"
    if not 0 <= key.priority <= MAX_PRIORITY:
        return f"priority must be from 0 to {MAX_PRIORITY}"
    if not 1 <= key.weight <= MAX_WEIGHT:
        return f"weight must be from 1 to {MAX_WEIGHT}"
    if key.max_in_flight < 0:
        return "max_in_flight must be 0 (no limit) or more"
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse(raw: Any) -> ManagedKey | None:
    try:
        data = json.loads(_text(raw))
        rate = data.get("rate_limit_per_minute")
        key = ManagedKey(
            scope=Scope(data["scope"]),
            name=str(data.get("name", "")),
            created=int(data.get("created", 0)),
            rate_limit_per_minute=int(rate) if rate is not None else None,
            tenant=str(data.get("tenant", "")),
            priority=int(data.get("priority", DEFAULT_PRIORITY)),
            weight=int(data.get("weight", 1)),
            max_in_flight=int(data.get("max_in_flight", 0)),
            refuse_over_limit=bool(data.get("refuse_over_limit", False)),
        )
        return None if _queueing_problem(key) else key
    except (ValueError, KeyError, TypeError, AttributeError):
        # A hand-edited or foreign entry must not break authentication for everyone else.
        return None


def new_key(scope: Scope) -> str:
    return f"llmr-{scope}-{secrets.token_urlsafe(32)}"


class ManagedKeyStore:
    """Create, list, revoke and load the keys of one fleet."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self._redis = redis
        self._hash = keys.api_keys

    async def create(
        self,
        scope: Scope,
        *,
        name: str = "",
        rate_limit_per_minute: int | None = None,
        queueing: ManagedKey | None = None,
    ) -> tuple[str, KeyListing]:
        """A new key; ``queueing`` (its tenant, priority, weight, max_in_flight and
        refuse_over_limit fields) says where its requests stand in the queue."""
        if len(name) > _MAX_NAME_LEN or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ValueError(f"name must be at most {_MAX_NAME_LEN} printable characters")
        if rate_limit_per_minute is not None and rate_limit_per_minute < 1:
            raise ValueError("rate_limit_per_minute must be at least 1")
        base = queueing or ManagedKey(scope, name, 0)
        managed = replace(
            base, scope=scope, name=name, created=int(time.time()),
            rate_limit_per_minute=rate_limit_per_minute,
        )  # fmt: skip
        problem = _queueing_problem(managed)
        if problem:
            raise ValueError(problem)
        key = new_key(scope)
        record = {k: v for k, v in asdict(managed).items() if v is not None}
        record["scope"] = str(scope)
        key_digest = digest(key)
        await self._redis.hset(self._hash, key_digest.hex(), json.dumps(record))
        return key, _listing(key_digest, managed)

    async def load(self) -> dict[bytes, ManagedKey]:
        raw = await self._redis.hgetall(self._hash)
        loaded: dict[bytes, ManagedKey] = {}
        for field_name, value in raw.items():
            parsed = _parse(value)
            try:
                key_digest = bytes.fromhex(_text(field_name))
            except ValueError:
                continue
            if parsed is not None:
                loaded[key_digest] = parsed
        return loaded

    async def list(self) -> list[KeyListing]:
        loaded = await self.load()
        listings = [_listing(d, k) for d, k in loaded.items()]
        return sorted(listings, key=lambda k: (k.created, k.key_id))

    async def revoke(self, key_id: str) -> KeyListing:
        """Remove the key whose id starts with ``key_id`` (at least 6 characters)."""
        wanted = key_id.strip().lower()
        if len(wanted) < 6:
            raise KeyNotFound("give at least 6 characters of the key id")
        loaded = await self.load()
        matches = [(d, k) for d, k in loaded.items() if key_id_of(d).startswith(wanted[:12])]
        if len(wanted) > 12:
            matches = [(d, k) for d, k in matches if d.hex().startswith(wanted)]
        if not matches:
            raise KeyNotFound(f"no managed key with id {key_id!r}")
        if len(matches) > 1:
            raise KeyNotFound(f"key id {key_id!r} is ambiguous: give more characters")
        key_digest, key = matches[0]
        await self._redis.hdel(self._hash, key_digest.hex())
        return _listing(key_digest, key)


#: A snapshot this many refresh periods old is stale: revocations made since are not
#: enforced here. Said once in the log (and by ``/readyz``), and again when it recovers.
STALE_AFTER_PERIODS = 3


class KeyRefresher:
    """Keeps a ``KeyRing``'s managed snapshot at most ``period_s`` old, or says it is not."""

    def __init__(self, store: ManagedKeyStore, keyring: KeyRing, period_s: float) -> None:
        self._store = store
        self._keyring = keyring
        self._period_s = period_s
        # A load that hangs (a Redis stalled up to its socket timeout) must not hold the
        # next refresh back: each one is bounded by the period, with a floor for slow links.
        self._timeout_s = max(period_s, 1.0)
        self._loaded_at: float | None = None
        self._warned = False
        self._task: asyncio.Task[None] | None = None

    def stale_for_s(self) -> float | None:
        """How old the snapshot is when it is older than ``STALE_AFTER_PERIODS`` periods
        (never loaded counts from start-up), else None."""
        if self._loaded_at is None:
            return None if self._task is None else float("inf")
        age = time.monotonic() - self._loaded_at
        return age if age > STALE_AFTER_PERIODS * self._period_s else None

    async def refresh(self) -> bool:
        """Reload once; False (and the old snapshot kept) when Redis did not answer."""
        try:
            loaded = await asyncio.wait_for(self._store.load(), self._timeout_s)
        except Exception as exc:
            stale = self.stale_for_s()
            if stale is not None and not self._warned:
                self._warned = True
                since = "since start-up" if stale == float("inf") else f"for {stale:.0f} s"
                log.warning(
                    "managed keys not refreshed %s (%s): keys revoked since are still "
                    "accepted by this replica",
                    since,
                    exc or type(exc).__name__,
                )
            else:
                log.debug("managed keys not refreshed: %s", exc or type(exc).__name__)
            return False
        self._keyring.replace_managed(loaded)
        self._loaded_at = time.monotonic()
        if self._warned:
            self._warned = False
            log.info("managed keys refreshed again (%d keys)", len(loaded))
        return True

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._forever(), name="key-refresher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._period_s)
            await self.refresh()


def scopes_in_store(settings: RouterSettings) -> frozenset[Scope]:
    """Scopes that have at least one managed key (a blocking, one-off look-up at start-up)."""

    async def lookup() -> frozenset[Scope]:
        store = open_store(settings.redis_url, timeout_s=settings.redis_socket_timeout_s)
        try:
            loaded = await ManagedKeyStore(store.redis, Keys(settings.key_prefix)).load()
        finally:
            await store.close()
        return frozenset(k.scope for k in loaded.values())

    return asyncio.run(lookup())
