"""Who waits and who runs, by tenant: the queue of each model by band and tenant, and each
tenant's requests in flight against its keys' fleet-wide limits.

Read from the shared state only (``queue-info:<model>``, ``queue-alive:<model>``,
``key-flight:<key id>`` and the leases they point at), so every replica shows the same
thing; ``llm-router fleet queues`` and the dashboard group waiters the same way. The fleet
view reads it with its own snapshot, and only when there is something to read: nothing is
queued and no key has a limit costs no round trip at all. Output is bounded: the busiest
groups keep a row each, the rest are summed into one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_router.auth import ManagedKey, key_id_of
from llm_router.observability.metrics import OTHER
from llm_router.state.keys import Keys

#: Band/tenant rows kept per model, tenants kept in the in-flight table.
MAX_QUEUE_GROUPS = 8
MAX_FLIGHT_TENANTS = 16
#: Queues read per snapshot: the longest ones (each costs up to ``queue_max`` entries).
MAX_QUEUES_READ = 16


@dataclass(frozen=True)
class LimitedKey:
    """A key with a fleet-wide ``max_in_flight``, under the tenant its requests queue as."""

    key_id: str
    tenant: str
    limit: int


def no_limited_keys() -> Sequence[LimitedKey]:
    return ()


def limited_keys(managed: Mapping[bytes, ManagedKey]) -> list[LimitedKey]:
    """The keys of a key-ring snapshot that carry a limit, in a stable order."""
    found = []
    for key_digest, key in managed.items():
        if key.max_in_flight > 0:
            tenancy = key.tenancy(key_id_of(key_digest))
            found.append(LimitedKey(tenancy.key_id, tenancy.tenant, key.max_in_flight))
    return sorted(found, key=lambda k: k.key_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_queue_info(raw: Mapping[Any, Any]) -> dict[str, tuple[str, int, float]]:
    """ticket → (tenant, band, arrival µs on the Redis clock), skipping what does not parse."""
    out = {}
    for ticket, value in raw.items():
        parts = _text(value).split(" ")
        if len(parts) == 3 and parts[1].isdigit():
            with contextlib.suppress(ValueError):
                out[_text(ticket)] = (parts[0], int(parts[1]), float(parts[2]))
    return out


def by_band_and_tenant(
    waiting: Iterable[tuple[str, int, float]], now_ms: int
) -> list[dict[str, Any]]:
    """One row per (band, tenant): waiters and the oldest one's wait; highest band first."""
    groups: dict[tuple[int, str], list[float]] = {}
    for tenant, band, arrival in waiting:
        groups.setdefault((band, tenant), []).append(arrival)
    return [
        {
            "tenant": tenant,
            "band": band,
            "waiting": len(arrivals),
            "oldest_wait_s": max(0.0, (now_ms * 1000 - min(arrivals)) / 1e6),
        }
        for (band, tenant), arrivals in sorted(groups.items(), key=lambda g: (-g[0][0], g[0][1]))
    ]


def _folded(
    rows: list[dict[str, Any]],
    limit: int,
    rank: str,
    sums: Sequence[str],
    peaks: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The ``limit`` rows highest by ``rank``, in their original order, then one ``other``
    row summing ``sums`` (and taking the largest of ``peaks``) over the rest; its
    ``folded`` says how many rows it stands for."""
    if len(rows) <= limit:
        return rows
    kept = set(sorted(range(len(rows)), key=lambda i: -rows[i][rank])[:limit])
    rest = [r for i, r in enumerate(rows) if i not in kept]
    other: dict[str, Any] = {"tenant": OTHER, "folded": len(rest)}
    other.update({name: sum(r[name] for r in rest) for name in sums})
    other.update({name: max(r[name] for r in rest) for name in peaks})
    return [r for i, r in enumerate(rows) if i in kept] + [other]


def queue_groups(info: Mapping[Any, Any], live: Iterable[Any], now_ms: int) -> list[dict[str, Any]]:
    """A model's waiters by band and tenant, dead tickets left out, bounded."""
    alive = {_text(t) for t in live}
    waiting = [v for t, v in parse_queue_info(info).items() if t in alive]
    rows = by_band_and_tenant(waiting, now_ms)
    return _folded(rows, MAX_QUEUE_GROUPS, "waiting", ("waiting",), ("oldest_wait_s",))


def flight_by_tenant(keys: Sequence[LimitedKey], used: Sequence[int]) -> list[dict[str, Any]]:
    """Per tenant: requests in flight on its limited keys, and the sum of their limits."""
    tenants: dict[str, dict[str, Any]] = {}
    for key, n in zip(keys, used, strict=True):
        row = tenants.setdefault(
            key.tenant, {"tenant": key.tenant, "used": 0, "limit": 0, "keys": 0}
        )
        row["used"] += n
        row["limit"] += key.limit
        row["keys"] += 1
    rows = sorted(tenants.values(), key=lambda r: (-r["used"], r["tenant"]))
    return _folded(rows, MAX_FLIGHT_TENANTS, "used", ("used", "limit", "keys"))


@dataclass
class TenantState:
    #: model → its waiters by band and tenant (models with nobody queued are absent).
    queues: dict[str, list[dict[str, Any]]]
    in_flight: list[dict[str, Any]]


async def read_tenants(
    redis: Any, keys: Keys, depths: Mapping[str, int], limited: Sequence[LimitedKey], now_ms: int
) -> TenantState:
    """The tenants' side of the fleet at ``now_ms`` (Redis clock): at most two round trips,
    none when no model has waiters and no key has a limit."""
    queued = sorted((m for m, d in depths.items() if d > 0), key=lambda m: (-depths[m], m))
    queued = queued[:MAX_QUEUES_READ]
    if not queued and not limited:
        return TenantState({}, [])
    pipe = redis.pipeline(transaction=False)
    for model in queued:
        pipe.hgetall(keys.queue_info(model))
        pipe.zrangebyscore(keys.queue_alive(model), now_ms + 1, "+inf")
    for key in limited:
        pipe.zrange(keys.key_flight(key.key_id), 0, -1)
    raw = await pipe.execute()
    queues = {
        model: queue_groups(raw[2 * i], raw[2 * i + 1], now_ms) for i, model in enumerate(queued)
    }
    members = [[_text(m) for m in found] for found in raw[2 * len(queued) :]]
    return TenantState(queues, flight_by_tenant(limited, await _live(redis, keys, members, now_ms)))


async def _live(redis: Any, keys: Keys, members: list[list[str]], now_ms: int) -> list[int]:
    """Per key, how many of its "<node> <lease>" members still hold a live lease: the count
    the acquire script enforces (ended members linger until the key's next acquire)."""
    pairs = [m.split(" ", 1) for found in members for m in found]
    if not pairs:
        return [0] * len(members)
    pipe = redis.pipeline(transaction=False)
    for pair in pairs:
        pipe.zscore(keys.leases(pair[0]), pair[-1])
    deadlines = iter(await pipe.execute())
    return [sum(1 for _ in found if float(next(deadlines) or 0) > now_ms) for found in members]
