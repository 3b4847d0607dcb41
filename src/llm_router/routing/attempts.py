"""How a failed attempt on a node is judged: whether it says the node is broken.

A node that cannot be reached at all (refused, unreachable, connect timeout, TLS failure)
is broken whatever the request was: the pair is excluded at once. Anything that happened
after the request reached the node (a 5xx, a redirect, a timeout, a hang-up, an oversized
or wrongly typed answer) may be the request's doing, so it is only evidence: several
different requests must fail on a (node, model) within a window before it is excluded,
and a request that fails on a second node (or that a second node refuses with a 4xx)
withdraws what it said against the first.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os

from llm_router.errors import GatewayTimeout, RouterError, UpstreamError
from llm_router.routing.hop_client import ConnectFailed, ConnectTimeout, HopError, TLSFailed
from llm_router.routing.node_hop import tls_failure_reason

log = logging.getLogger("llm_router.routing.proxy")


class Verdict(enum.Enum):
    UNREACHABLE = "unreachable"  # exclude at once
    BUSY = "busy"  # the node said 429: skip it briefly
    ANSWER = "answer"  # the request got a bad answer: evidence, not proof
    # The node refused the router's node secret (a lease read just before the node
    # re-registered): nothing against the node; the next lease carries the new secret.
    STALE_SECRET = "stale_secret"


class AttemptFailed(Exception):
    """One attempt failed. ``error`` is what the client may see (the node id, never its
    address); ``detail`` is for the log line."""

    def __init__(
        self, error: RouterError, verdict: Verdict, detail: str = "", *, declined: bool = False
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.verdict = verdict
        self.detail = detail or error.message
        #: The node does not serve this endpoint: nothing to weigh against it.
        self.declined = declined


def connection_failure(node_id: str, exc: HopError) -> AttemptFailed:
    """Translate an error raised while sending the request and waiting for the headers."""
    if isinstance(exc, TLSFailed):
        reason = tls_failure_reason(exc)
        # A certificate problem is the operator's to fix: said once per exclusion, loudly.
        log.warning("TLS to node %s failed: %s (%s)", node_id, reason, exc)
        return AttemptFailed(
            UpstreamError(f"node {node_id} failed TLS ({reason})"), Verdict.UNREACHABLE, str(exc)
        )
    if isinstance(exc, ConnectFailed):
        errno = exc.errno
        reason = os.strerror(errno).lower() if errno else "connection failed"
        return AttemptFailed(
            UpstreamError(f"node {node_id} could not be reached ({reason})"),
            Verdict.UNREACHABLE,
            str(exc),
        )
    if isinstance(exc, ConnectTimeout):
        return AttemptFailed(
            GatewayTimeout(f"node {node_id} did not accept a connection in time"),
            Verdict.UNREACHABLE,
            str(exc),
        )
    return AttemptFailed(
        UpstreamError(f"node {node_id} closed the connection before answering"),
        Verdict.ANSWER,
        f"{type(exc).__name__}: {exc}",
    )


def bad_answer(node_id: str, what: str, detail: str = "") -> AttemptFailed:
    return AttemptFailed(UpstreamError(f"node {node_id} {what}"), Verdict.ANSWER, detail)


def request_digest(path: str, body: bytes) -> str:
    """What makes two requests "the same" for the evidence count: the client's SDK retrying
    one failing request is one request, not several."""
    return hashlib.blake2b(path.encode() + b"\0" + body, digest_size=12).hexdigest()
