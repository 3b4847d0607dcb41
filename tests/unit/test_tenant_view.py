"""The tenant panel's grouping: waiters by band and tenant, in flight by tenant, bounded."""

from __future__ import annotations

from llm_router.auth import ManagedKey, Scope, digest
from llm_router.observability.tenant_view import (
    MAX_FLIGHT_TENANTS,
    MAX_QUEUE_GROUPS,
    LimitedKey,
    flight_by_tenant,
    limited_keys,
    queue_groups,
)

NOW_MS = 1_000_000


def test_dead_tickets_and_unparsable_entries_are_left_out() -> None:
    info = {
        b"t1": b"team-a 5 999000000",
        b"t2": b"team-a 5 998000000",
        b"t3": b"team-b 7 999500000",
        b"dead": b"team-c 9 1000",
        b"junk": b"no-band-here",
    }
    rows = queue_groups(info, [b"t1", b"t2", b"t3", b"junk"], NOW_MS)
    assert [(r["band"], r["tenant"], r["waiting"]) for r in rows] == [
        (7, "team-b", 1),
        (5, "team-a", 2),
    ]
    assert rows[1]["oldest_wait_s"] == 2.0


def test_many_tenants_keep_the_longest_queues_and_sum_the_rest() -> None:
    info, live = {}, []
    extra = 5
    for t in range(MAX_QUEUE_GROUPS + extra):
        for i in range(t + 1):  # tenant t has t + 1 waiters
            ticket = f"t{t}-{i}"
            info[ticket] = f"tenant{t:02d} 5 {NOW_MS * 1000 - 1000 * (t + 1)}"
            live.append(ticket)
    rows = queue_groups(info, live, NOW_MS)
    assert len(rows) == MAX_QUEUE_GROUPS + 1
    kept = {r["tenant"] for r in rows[:-1]}
    assert kept == {f"tenant{t:02d}" for t in range(extra, MAX_QUEUE_GROUPS + extra)}
    other = rows[-1]
    assert other["tenant"] == "other" and other["folded"] == extra
    assert other["waiting"] == sum(range(1, extra + 1))
    assert other["oldest_wait_s"] == extra / 1000
    assert sum(r["waiting"] for r in rows) == len(live)


def test_in_flight_sums_a_tenants_keys_and_folds_the_idle_tail() -> None:
    keys = [LimitedKey(f"k{i:02d}", f"tenant{i:02d}", 4) for i in range(MAX_FLIGHT_TENANTS + 3)]
    keys.append(LimitedKey("k-second", "tenant00", 2))
    used = [1] * MAX_FLIGHT_TENANTS + [0, 0, 0] + [2]
    rows = flight_by_tenant(keys, used)
    assert rows[0] == {"tenant": "tenant00", "used": 3, "limit": 6, "keys": 2}
    assert len(rows) == MAX_FLIGHT_TENANTS + 1
    assert rows[-1] == {"tenant": "other", "folded": 3, "used": 0, "limit": 12, "keys": 3}


def test_only_keys_with_a_limit_count_and_a_key_without_tenant_is_its_own() -> None:
    managed = {
        digest("one"): ManagedKey(Scope.API, "one", 0, tenant="team", max_in_flight=2),
        digest("two"): ManagedKey(Scope.API, "two", 0, max_in_flight=1),
        digest("three"): ManagedKey(Scope.API, "three", 0, tenant="team"),
    }
    found = {(k.tenant, k.limit) for k in limited_keys(managed)}
    assert found == {("team", 2), (digest("two").hex()[:12], 1)}
