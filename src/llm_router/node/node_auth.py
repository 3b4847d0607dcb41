"""Only the router may use this node (BRIEF §11).

Every registration answer carries a fresh per-node secret; the router presents it as
``Authorization: Bearer <secret>`` on each request it proxies here. Until the agent has
registered it holds no secret and refuses every request that needs one. The secret never
leaves this module: the runtime gets the agent's own runtime key, if any, never this.
"""

from __future__ import annotations

import hmac

from llm_router.asgi_util import Scope, Send, send_error

#: Paths anyone may call: the agent's probe and the model listing (the router reads the
#: listing at registration, before a secret exists). Everything else needs the secret.
OPEN_PATHS = frozenset({"/healthz", "/v1/models"})
_OPEN_PREFIXES = ("/v1/models/",)
_BEARER = b"bearer "


class NodeCredential:
    """The secret this node currently accepts, replaced by every registration."""

    def __init__(self) -> None:
        self._expected: bytes | None = None

    def set(self, secret: str) -> None:
        self._expected = secret.encode() if secret else None

    @property
    def issued(self) -> bool:
        return self._expected is not None

    def admits(self, scope: Scope) -> bool:
        expected = self._expected
        if expected is None:
            return False
        presented = [v for k, v in scope["headers"] if k == b"authorization"]
        if len(presented) != 1:
            return False
        value = presented[0]
        if value[: len(_BEARER)].lower() != _BEARER:
            return False
        # Constant time: a mismatch takes as long wherever it is.
        return hmac.compare_digest(value[len(_BEARER) :].strip(), expected)


def needs_secret(path: str) -> bool:
    return path not in OPEN_PATHS and not path.startswith(_OPEN_PREFIXES)


async def refuse(send: Send) -> None:
    await send_error(
        send,
        401,
        "this node only serves requests from its router",
        "authentication_error",
        "invalid_api_key",
    )
