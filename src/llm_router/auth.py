"""API keys and scopes.

Three scopes: ``api`` (OpenAI endpoints), ``node`` (registration; heartbeats also need the
node's own token) and ``admin`` (fleet administration). An admin key is accepted for every
scope. A scope with no key configured is open only when the operator said so
(``auth_disabled``) or the router runs on the embedded store (a loopback demo); a router on
a real Redis refuses to start with ``node`` or ``admin`` open (see ``check_startup``).
Keys travel as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` and are compared
as SHA-256 digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from llm_router.errors import AuthError, Forbidden
from llm_router.settings import RouterSettings


class Scope(StrEnum):
    API = "api"
    NODE = "node"
    ADMIN = "admin"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def presented_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


@dataclass(frozen=True)
class KeyRing:
    keys: Mapping[Scope, tuple[bytes, ...]]
    open_scopes: frozenset[Scope]

    @classmethod
    def from_settings(cls, settings: RouterSettings) -> KeyRing:
        keys = {
            Scope.API: tuple(_digest(k) for k in settings.api_keys),
            Scope.NODE: tuple(_digest(k) for k in settings.node_keys),
            Scope.ADMIN: tuple(_digest(k) for k in settings.admin_keys),
        }
        may_open = settings.auth_disabled or settings.embedded
        open_scopes = frozenset(s for s in Scope if not keys[s] and (s is Scope.API or may_open))
        return cls(keys=keys, open_scopes=open_scopes)

    def _matches(self, digest: bytes, candidates: Iterable[bytes]) -> bool:
        found = False
        for candidate in candidates:
            # No early exit: the time taken does not say which key (if any) matched.
            found |= hmac.compare_digest(digest, candidate)
        return found

    def check(self, headers: Mapping[str, str], scope: Scope) -> None:
        """Raise 401 for a missing/unknown key, 403 for a known key of another scope."""
        if scope in self.open_scopes:
            return
        key = presented_key(headers)
        if key is None:
            raise AuthError(
                f"Missing API key for scope '{scope}': send 'Authorization: Bearer <key>'"
            )
        digest = _digest(key)
        if self._matches(digest, self.keys[scope]) or self._matches(digest, self.keys[Scope.ADMIN]):
            return
        if any(self._matches(digest, self.keys[s]) for s in Scope):
            raise Forbidden(f"This key is not allowed in scope '{scope}'")
        raise AuthError("Invalid API key")


def startup_problems(settings: RouterSettings) -> list[str]:
    """Reasons the router must not start as configured (empty when it may)."""
    if settings.embedded or settings.auth_disabled:
        return []
    missing = [
        name
        for name, keys in (("node", settings.node_keys), ("admin", settings.admin_keys))
        if not keys
    ]
    if not missing:
        return []
    return [
        f"no key configured for scope(s) {', '.join(missing)} on a shared Redis: anyone "
        "could register a node and receive prompts. Set LLM_ROUTER_NODE_KEYS and "
        "LLM_ROUTER_ADMIN_KEYS, or LLM_ROUTER_AUTH_DISABLED=true for development."
    ]
