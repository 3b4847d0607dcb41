"""Keys and scopes: settings keys, keys managed in Redis, start-up refusal, rate limits."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from llm_router.auth import KeyRing, ManagedKey, Principal, Scope, digest, key_id_of
from llm_router.auth import startup_problems as problems_of
from llm_router.errors import AuthError, Forbidden, InvalidRequest, RateLimited
from llm_router.security.managed_keys import KeyNotFound, KeyRefresher, ManagedKeyStore
from llm_router.security.rate_limit import RateLimiter
from llm_router.settings import RouterSettings
from llm_router.state.connect import Store
from llm_router.state.keys import Keys
from llm_router.state.scripts import FleetScripts
from llm_router.tenancy import DEFAULT_TENANCY, PRIORITY_HEADER, Tenancy

REDIS = "redis://127.0.0.1:1/0"


def settings(**values: Any) -> RouterSettings:
    return RouterSettings(_env_file=None, **values)  # type: ignore[call-arg]


def ring(**values: Any) -> KeyRing:
    return KeyRing.from_settings(settings(redis_url=REDIS, **values))


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


FULL = {"api_keys": ["a1", "a2"], "node_keys": ["n1"], "admin_keys": ["root"]}


@pytest.mark.parametrize(
    ("key", "scope"), [("a1", Scope.API), ("a2", Scope.API), ("n1", Scope.NODE)]
)
def test_a_key_opens_its_own_scope(key: str, scope: Scope) -> None:
    principal = ring(**FULL).check(bearer(key), scope)
    assert principal == Principal(key_id_of(digest(key)), scope)


@pytest.mark.parametrize("scope", list(Scope))
def test_an_admin_key_opens_every_scope(scope: Scope) -> None:
    principal = ring(**FULL).check({"x-api-key": "root"}, scope)
    assert principal is not None and principal.scope is Scope.ADMIN


@pytest.mark.parametrize(
    ("key", "scope"),
    [("a1", Scope.NODE), ("a1", Scope.ADMIN), ("n1", Scope.API), ("n1", Scope.ADMIN)],
)
def test_a_known_key_of_another_scope_is_forbidden(key: str, scope: Scope) -> None:
    with pytest.raises(Forbidden) as caught:
        ring(**FULL).check(bearer(key), scope)
    assert caught.value.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer "},
        {"authorization": "Basic cm9vdDp4"},
        {"authorization": "Bearer nope"},
        {"x-api-key": "  "},
        {"x-api-key": "root2"},
        {"authorization": "Bearer roo"},
    ],
)
def test_missing_or_unknown_keys_are_unauthorized(headers: dict[str, str]) -> None:
    with pytest.raises(AuthError) as caught:
        ring(**FULL).check(headers, Scope.ADMIN)
    assert type(caught.value) is AuthError and caught.value.status_code == 401


def test_api_scope_may_be_left_open_but_node_and_admin_only_when_allowed() -> None:
    assert ring(node_keys=["n"], admin_keys=["r"]).open_scopes == {Scope.API}
    assert ring().open_scopes == {Scope.API}
    assert ring(auth_disabled=True).open_scopes == set(Scope)
    assert KeyRing.from_settings(settings()).open_scopes == set(Scope)  # embedded demo
    assert ring(auth_disabled=True, admin_keys=["r"]).open_scopes == {Scope.API, Scope.NODE}


def test_an_open_scope_has_no_principal_and_a_closed_one_without_keys_refuses() -> None:
    closed = ring()
    assert closed.check({}, Scope.API) is None
    with pytest.raises(AuthError):
        closed.check(bearer("anything"), Scope.NODE)


def test_managed_keys_close_their_scope_and_carry_their_rate_limit() -> None:
    keyring = ring(auth_disabled=True)
    keyring.replace_managed(
        {digest("m-api"): ManagedKey(Scope.API, "app", 1, rate_limit_per_minute=7)}
    )
    assert keyring.open_scopes == {Scope.NODE, Scope.ADMIN}
    principal = keyring.check(bearer("m-api"), Scope.API)
    key_id = key_id_of(digest("m-api"))
    assert principal == Principal(key_id, Scope.API, 7, Tenancy(tenant=key_id))
    with pytest.raises(AuthError):
        keyring.check(bearer("m-apx"), Scope.API)
    keyring.replace_managed({})
    assert keyring.check(bearer("m-api"), Scope.API) is None  # open again, nothing known


def test_managed_keys_carry_their_tenancy_and_settings_keys_the_default() -> None:
    keyring = ring(**FULL)
    keyring.replace_managed(
        {
            digest("m-batch"): ManagedKey(
                Scope.API, "batch", 1, tenant="research", priority=2, weight=3, max_in_flight=4
            )
        }
    )
    found = keyring.check(bearer("m-batch"), Scope.API)
    assert found is not None
    key_id = key_id_of(digest("m-batch"))
    assert found.tenancy == Tenancy("research", 2, 3, key_id=key_id, max_in_flight=4)
    settings_key = keyring.check(bearer("a1"), Scope.API)
    assert settings_key is not None and settings_key.tenancy == DEFAULT_TENANCY


@pytest.mark.parametrize(("header", "band"), [("0", 0), ("3", 3), ("7", 7), ("9", 7), (" 2 ", 2)])
def test_a_request_may_lower_its_priority_never_raise_it(header: str, band: int) -> None:
    key = Tenancy("t", priority=7)
    assert key.for_request({PRIORITY_HEADER: header}).priority == band
    assert key.for_request({}) == key


@pytest.mark.parametrize("header", ["10", "-1", "high", "", "1.5"])
def test_a_bad_priority_header_is_a_400_naming_it(header: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        DEFAULT_TENANCY.for_request({PRIORITY_HEADER: header})
    assert caught.value.param == PRIORITY_HEADER and caught.value.status_code == 400


def test_a_managed_key_of_another_scope_is_forbidden() -> None:
    keyring = ring(**FULL)
    keyring.replace_managed({digest("m-node"): ManagedKey(Scope.NODE, "rack 4", 1)})
    assert keyring.check(bearer("m-node"), Scope.NODE) is not None
    with pytest.raises(Forbidden):
        keyring.check(bearer("m-node"), Scope.ADMIN)


# --- start-up ------------------------------------------------------------------------------


def test_a_shared_redis_with_node_or_admin_open_refuses_to_start() -> None:
    found = problems_of(settings(redis_url=REDIS), frozenset())
    assert len(found) == 1 and "node, admin" in found[0]
    assert "LLM_ROUTER_AUTH_DISABLED" in found[0]
    only_node = problems_of(settings(redis_url=REDIS, admin_keys=["r"]), frozenset())
    assert "scope(s) node " in only_node[0]


@pytest.mark.parametrize(
    ("values", "managed"),
    [
        ({"redis_url": REDIS, "auth_disabled": True}, frozenset()),
        ({}, frozenset()),
        ({"redis_url": REDIS, "node_keys": ["n"], "admin_keys": ["r"]}, frozenset()),
        ({"redis_url": REDIS}, frozenset({Scope.NODE, Scope.ADMIN})),
        ({"redis_url": REDIS, "node_keys": ["n"]}, frozenset({Scope.ADMIN})),
    ],
)
def test_start_up_is_allowed(values: dict[str, Any], managed: frozenset[Scope]) -> None:
    assert problems_of(settings(**values), managed) == []


def test_start_up_reports_an_unreachable_store_when_it_had_to_look() -> None:
    found = problems_of(settings(redis_url=REDIS, redis_socket_timeout_s=0.5))
    assert len(found) == 1 and "could not read managed keys" in found[0]


def test_start_up_looks_up_managed_keys_in_the_real_store(redis_url: str, keys: Keys) -> None:
    configured = settings(redis_url=redis_url, key_prefix=keys.prefix)
    assert problems_of(configured)

    async def create(scope: Scope) -> None:
        from llm_router.state.connect import open_store

        store = open_store(redis_url)
        try:
            await ManagedKeyStore(store.redis, keys).create(scope)
        finally:
            await store.close()

    asyncio.run(create(Scope.NODE))
    assert "scope(s) admin " in problems_of(configured)[0]
    asyncio.run(create(Scope.ADMIN))
    assert problems_of(configured) == []


# --- managed keys in the store (embedded and real Redis) ---------------------------------


async def test_created_keys_are_stored_hashed_and_listed_without_the_key(
    store: Store, keys: Keys
) -> None:
    managed = ManagedKeyStore(store.redis, keys)
    key, listing = await managed.create(Scope.NODE, name="rack 4", rate_limit_per_minute=60)
    assert key.startswith("llmr-node-") and len(key) > 40
    raw = await store.redis.hgetall(keys.api_keys)
    assert list(raw) == [digest(key).hex().encode()]
    assert key.encode() not in b"".join([*raw, *raw.values()])
    assert await managed.list() == [listing]
    assert listing.key_id == key_id_of(digest(key)) and listing.name == "rack 4"
    loaded = await managed.load()
    assert loaded[digest(key)].scope is Scope.NODE
    assert loaded[digest(key)].rate_limit_per_minute == 60


async def test_revoking_needs_an_unambiguous_id(store: Store, keys: Keys) -> None:
    managed = ManagedKeyStore(store.redis, keys)
    _, first = await managed.create(Scope.API)
    _, second = await managed.create(Scope.ADMIN)
    with pytest.raises(KeyNotFound):
        await managed.revoke("abc")
    with pytest.raises(KeyNotFound):
        await managed.revoke("ffffffffffff" if not first.key_id.startswith("ff") else "000000")
    assert (await managed.revoke(first.key_id.upper())).key_id == first.key_id
    assert [k.key_id for k in await managed.list()] == [second.key_id]


async def test_foreign_entries_in_the_hash_are_ignored(store: Store, keys: Keys) -> None:
    await store.redis.hset(keys.api_keys, mapping={"zz": "{}", "ab" * 32: "not json"})
    await store.redis.hset(keys.api_keys, "cd" * 32, '{"scope": "root"}')
    managed = ManagedKeyStore(store.redis, keys)
    key, _ = await managed.create(Scope.API)
    assert list(await managed.load()) == [digest(key)]


@pytest.mark.parametrize(("name", "limit"), [("x" * 129, None), ("bad\nname", None), ("ok", 0)])
async def test_bad_key_attributes_are_refused(
    store: Store, keys: Keys, name: str, limit: int | None
) -> None:
    with pytest.raises(ValueError):
        await ManagedKeyStore(store.redis, keys).create(
            Scope.API, name=name, rate_limit_per_minute=limit
        )


async def test_tenancy_is_stored_with_the_key(store: Store, keys: Keys) -> None:
    managed = ManagedKeyStore(store.redis, keys)
    wanted = ManagedKey(
        Scope.API, "", 0, tenant="team-b", priority=8, weight=5, max_in_flight=3,
        refuse_over_limit=True,
    )  # fmt: skip
    key, listing = await managed.create(Scope.API, name="chat", queueing=wanted)
    loaded = (await managed.load())[digest(key)]
    assert (loaded.tenant, loaded.priority, loaded.weight) == ("team-b", 8, 5)
    assert loaded.max_in_flight == 3 and loaded.refuse_over_limit
    assert (listing.tenant, listing.priority, listing.weight) == ("team-b", 8, 5)
    assert await managed.list() == [listing]


@pytest.mark.parametrize(
    "bad",
    [
        {"priority": 10},
        {"priority": -1},
        {"weight": 0},
        {"weight": 1001},
        {"max_in_flight": -1},
        {"tenant": "two words"},
        {"tenant": "x" * 129},
    ],
)
async def test_bad_tenancy_is_refused(store: Store, keys: Keys, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        await ManagedKeyStore(store.redis, keys).create(
            Scope.API, queueing=ManagedKey(Scope.API, "", 0, **bad)
        )


async def test_a_refresh_applies_creations_and_revocations(store: Store, keys: Keys) -> None:
    keyring = ring(**FULL)
    managed = ManagedKeyStore(store.redis, keys)
    refresher = KeyRefresher(managed, keyring, period_s=60)
    key, listing = await managed.create(Scope.API)
    with pytest.raises(AuthError):
        keyring.check(bearer(key), Scope.API)  # not yet seen
    assert await refresher.refresh()
    assert keyring.check(bearer(key), Scope.API) is not None
    await managed.revoke(listing.key_id)
    assert await refresher.refresh()
    with pytest.raises(AuthError):
        keyring.check(bearer(key), Scope.API)


async def test_a_failed_refresh_keeps_the_last_snapshot(keys: Keys) -> None:
    class Down:
        async def hgetall(self, _: str) -> dict[bytes, bytes]:
            raise ConnectionError("store down")

    keyring = ring(**FULL)
    keyring.replace_managed({digest("m"): ManagedKey(Scope.API, "", 1)})
    assert not await KeyRefresher(ManagedKeyStore(Down(), keys), keyring, 60).refresh()
    assert keyring.check(bearer("m"), Scope.API) is not None


async def test_a_refresh_that_hangs_is_bounded_and_a_stale_snapshot_is_said_once(
    store: Store, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky:
        """The fleet's Redis, except that while ``stalled`` every call hangs."""

        stalled = False

        async def hgetall(self, name: str) -> dict[bytes, bytes]:
            if self.stalled:
                await asyncio.sleep(3600)
            return await store.redis.hgetall(name)  # type: ignore[no-any-return]

    caplog.set_level(logging.INFO, logger="llm_router.security.managed_keys")
    link = Flaky()
    refresher = KeyRefresher(ManagedKeyStore(link, keys), ring(**FULL), period_s=0.05)
    await refresher.start()
    try:
        assert refresher.stale_for_s() is None
        link.stalled = True
        started = time.monotonic()
        assert not await refresher.refresh()  # bounded: not the hour the call would take
        assert time.monotonic() - started < 5
        assert not await refresher.refresh()
        stale = refresher.stale_for_s()
        assert stale is not None and stale > 3 * 0.05
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "still accepted" in warnings[0].getMessage()
        link.stalled = False
        assert await refresher.refresh()
        assert refresher.stale_for_s() is None
        assert any("refreshed again" in r.getMessage() for r in caplog.records)
    finally:
        await refresher.stop()


# --- rate limits ---------------------------------------------------------------------------


async def test_a_key_past_its_limit_gets_429_with_retry_after(
    scripts: FleetScripts, store: Store, keys: Keys
) -> None:
    limiter = RateLimiter(scripts, default_per_minute=3)
    caller = Principal("k1", Scope.API)
    for _ in range(3):
        await limiter.admit(caller)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(caller)
    assert caught.value.status_code == 429 and caught.value.code == "rate_limit_exceeded"
    assert 1 <= int(caught.value.headers["Retry-After"]) <= 60
    await limiter.admit(Principal("k2", Scope.API))  # another key has its own budget
    assert await store.redis.zcard(keys.rate("k1")) == 3  # refusals are not counted
    assert 0 < await store.redis.pttl(keys.rate("k1")) <= 60_000


async def test_a_key_limit_overrides_the_default_and_open_scopes_are_not_counted(
    scripts: FleetScripts, store: Store, keys: Keys
) -> None:
    limiter = RateLimiter(scripts, default_per_minute=0)
    await limiter.admit(None)
    await limiter.admit(Principal("free", Scope.API))
    assert await store.redis.exists(keys.rate("free")) == 0
    limited = Principal("one", Scope.API, rate_limit_per_minute=1)
    await limiter.admit(limited)
    with pytest.raises(RateLimited):
        await limiter.admit(limited)


async def test_two_replicas_share_one_budget(store: Store, keys: Keys) -> None:
    replicas = [RateLimiter(FleetScripts(store.redis, keys), 4) for _ in range(2)]
    caller = Principal("shared", Scope.API)
    outcomes = await asyncio.gather(
        *(replicas[i % 2].admit(caller) for i in range(10)), return_exceptions=True
    )
    assert sum(o is None for o in outcomes) == 4
    assert all(isinstance(o, RateLimited) for o in outcomes if o is not None)
