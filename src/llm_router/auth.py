"""API keys and scopes.

Three scopes: ``api`` (OpenAI endpoints), ``node`` (registration; heartbeats also need the
node's own token) and ``admin`` (fleet administration). An admin key is accepted for every
scope. Keys come from two places: the settings (``API_KEYS``, ``NODE_KEYS``, ``ADMIN_KEYS``)
and the fleet's Redis (``llm-router keys create``), where only their SHA-256 is stored.
This module never talks to Redis on the request path: managed keys are a snapshot that a
background task replaces every ``key_refresh_s`` (see ``security.managed_keys``), so a
revocation takes effect on every replica within that period.

A scope with no key at all is open only when the operator said so (``auth_disabled``) or
the router runs on the embedded store (a loopback demo), except ``api`` which an operator
may leave open on purpose. A router on a real Redis refuses to start with ``node`` or
``admin`` open (see ``startup_problems``).

Keys travel as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Settings keys are
compared as digests with ``hmac.compare_digest`` over every candidate (no early exit);
managed keys are looked up by digest, which reveals nothing usable about any key: an
attacker cannot steer the SHA-256 of what they send.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from llm_router.errors import AuthError, Forbidden, InvalidRequest
from llm_router.settings import RouterSettings
from llm_router.tenancy import DEFAULT_PRIORITY, DEFAULT_TENANCY, Tenancy


class Scope(StrEnum):
    API = "api"
    NODE = "node"
    ADMIN = "admin"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id_of(key_digest: bytes) -> str:
    """The public name of a key: short enough to type, useless for authenticating."""
    return key_digest.hex()[:12]


def presented_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def ambiguous_credentials(raw_headers: Iterable[tuple[bytes, bytes]]) -> InvalidRequest | None:
    """Why a request's credentials are ambiguous, or ``None``: two ``Authorization``
    headers, two ``X-API-Key`` headers, or both kinds naming different keys.

    Components disagree on which of two copies counts (the inference path took the last,
    the framework the first), so a request carrying two is refused before anyone picks.
    """
    auth: list[bytes] = []
    api_key: list[bytes] = []
    for name, value in raw_headers:
        if name == b"authorization":
            auth.append(value)
        elif name == b"x-api-key":
            api_key.append(value)
    if len(auth) > 1:
        return InvalidRequest("Send one Authorization header, not several", param="Authorization")
    if len(api_key) > 1:
        return InvalidRequest("Send one X-API-Key header, not several", param="X-API-Key")
    if auth and api_key:
        bearer = presented_key({"authorization": auth[0].decode("latin-1")})
        if bearer != api_key[0].decode("latin-1").strip():
            return InvalidRequest(
                "Authorization and X-API-Key name different keys; send one", param="X-API-Key"
            )
    return None


@dataclass(frozen=True)
class ManagedKey:
    """A key created with ``llm-router keys create``; Redis holds this under its digest."""

    scope: Scope
    name: str
    created: int
    rate_limit_per_minute: int | None = None
    #: The tenant its requests are queued under; "" means the key is a tenant of its own.
    tenant: str = ""
    priority: int = DEFAULT_PRIORITY
    weight: int = 1
    max_in_flight: int = 0
    refuse_over_limit: bool = False

    def tenancy(self, key_id: str) -> Tenancy:
        return Tenancy(
            tenant=self.tenant or key_id,
            priority=self.priority,
            weight=self.weight,
            key_id=key_id if self.max_in_flight else "",
            max_in_flight=self.max_in_flight,
            refuse_over_limit=self.refuse_over_limit,
        )


@dataclass(frozen=True)
class Principal:
    """Who a request authenticated as: the key's public id and the scope it holds."""

    key_id: str
    scope: Scope
    rate_limit_per_minute: int | None = None
    #: Its place in the fleet-wide queue (settings keys: the default tenant).
    tenancy: Tenancy = DEFAULT_TENANCY


_NO_MANAGED: Mapping[bytes, ManagedKey] = MappingProxyType({})


@dataclass
class KeyRing:
    keys: Mapping[Scope, tuple[bytes, ...]]
    may_open: bool
    managed: Mapping[bytes, ManagedKey] = field(default_factory=lambda: _NO_MANAGED)
    _managed_scopes: frozenset[Scope] = field(default=frozenset(), repr=False)

    @classmethod
    def from_settings(cls, settings: RouterSettings) -> KeyRing:
        keys = {
            Scope.API: tuple(digest(k) for k in settings.api_keys),
            Scope.NODE: tuple(digest(k) for k in settings.node_keys),
            Scope.ADMIN: tuple(digest(k) for k in settings.admin_keys),
        }
        return cls(keys=keys, may_open=settings.auth_disabled or settings.embedded)

    def replace_managed(self, managed: Mapping[bytes, ManagedKey]) -> None:
        """Swap in a fresh snapshot of the Redis-managed keys (one assignment: no tearing)."""
        scopes = frozenset(k.scope for k in managed.values())
        self.managed, self._managed_scopes = MappingProxyType(dict(managed)), scopes

    @property
    def open_scopes(self) -> frozenset[Scope]:
        return frozenset(s for s in Scope if self._is_open(s))

    def _is_open(self, scope: Scope) -> bool:
        if self.keys[scope] or scope in self._managed_scopes:
            return False
        return scope is Scope.API or self.may_open

    @staticmethod
    def _matches(key_digest: bytes, candidates: Iterable[bytes]) -> bool:
        found = False
        for candidate in candidates:
            # No early exit: the time taken does not say which key (if any) matched.
            found |= hmac.compare_digest(key_digest, candidate)
        return found

    def _principal(self, key_digest: bytes) -> Principal | None:
        key_id = key_id_of(key_digest)
        managed = self.managed.get(key_digest)
        if managed is not None:
            return Principal(
                key_id, managed.scope, managed.rate_limit_per_minute, managed.tenancy(key_id)
            )
        # Admin first: a key listed under several scopes takes the widest.
        for scope in (Scope.ADMIN, Scope.NODE, Scope.API):
            if self._matches(key_digest, self.keys[scope]):
                return Principal(key_id, scope)
        return None

    def check(self, headers: Mapping[str, str], scope: Scope) -> Principal | None:
        """Who is calling; ``None`` on an open scope. 401 for a missing or unknown key,
        403 for a known key of another scope."""
        if self._is_open(scope):
            return None
        key = presented_key(headers)
        if key is None:
            raise AuthError(
                f"Missing API key for scope '{scope}': send 'Authorization: Bearer <key>'"
            )
        key_digest = digest(key)
        found = self._principal(key_digest)
        if found is None:
            raise AuthError("Invalid API key")
        if found.scope is not scope and found.scope is not Scope.ADMIN:
            # Name what the endpoint needs, never what the key holds: the answer must not
            # tell a caller holding a stolen key how far it reaches.
            raise Forbidden(f"This key is not allowed here: scope '{scope}' is required")
        return found


def startup_problems(
    settings: RouterSettings, managed_scopes: frozenset[Scope] | None = None
) -> list[str]:
    """Reasons the router must not start as configured (empty when it may).

    ``node`` and ``admin`` count as closed when the settings or the fleet's Redis hold a key
    for them; ``managed_scopes`` says which scopes Redis has keys for, and is looked up
    (once, before the server starts) when not given.
    """
    if settings.embedded or settings.auth_disabled:
        return []
    needed = [
        scope
        for scope, keys in ((Scope.NODE, settings.node_keys), (Scope.ADMIN, settings.admin_keys))
        if not keys
    ]
    if not needed:
        return []
    lookup_error = ""
    if managed_scopes is None:
        from llm_router.security.managed_keys import scopes_in_store

        try:
            managed_scopes = scopes_in_store(settings)
        except Exception as exc:
            managed_scopes, lookup_error = frozenset(), f" (could not read managed keys: {exc})"
    missing = [str(s) for s in needed if s not in managed_scopes]
    if not missing:
        return []
    return [
        f"no key configured for scope(s) {', '.join(missing)} on a shared Redis: anyone "
        "could register a node and receive prompts. Set LLM_ROUTER_NODE_KEYS and "
        "LLM_ROUTER_ADMIN_KEYS, create keys with 'llm-router keys create --scope node|admin', "
        f"or set LLM_ROUTER_AUTH_DISABLED=true for development{lookup_error}."
    ]
