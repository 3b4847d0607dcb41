"""What of a node's response headers reaches the client: an allow-list.

A node is trusted to answer the request, not to speak for the router's origin (where the
dashboard runs with an admin key): it cannot set cookies, CORS, HSTS or ``Alt-Svc``, or
send the client elsewhere with ``Location``. Anything not listed here is dropped; which
content types an endpoint's answers may have is its row's business (``endpoints.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

SSE = "text/event-stream"

_PASSED = frozenset({"cache-control", "retry-after", "openai-processing-ms", "openai-version"})
_PASSED_PREFIXES = ("x-ratelimit-", "anthropic-")
#: The runtime's own request id is worth having for its logs, but ``x-request-id`` is the
#: router's: it travels under this name instead.
NODE_REQUEST_ID = "x-llm-router-node-request-id"
_NODE_REQUEST_ID_SOURCES = frozenset({"x-request-id", "request-id"})
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def media_type(content_type: str | None) -> str:
    """``application/json`` of ``Application/JSON; charset=utf-8``; "" when absent."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


class HeaderView(Protocol):
    """A response's headers as any HTTP client keeps them (ours, or a multidict)."""

    def items(self) -> Iterable[tuple[str, str]]: ...

    def getall(self, key: str, /) -> list[str]: ...

    def __contains__(self, key: object, /) -> bool: ...


def passed_headers(upstream: HeaderView) -> dict[str, str]:
    """The node's headers a client may see, lower-cased, first occurrence of each.

    Headers the node names in ``Connection`` are hop-by-hop by its own say-so and stay
    behind even when listed. ``content-type`` is passed separately, once checked;
    ``content-length`` is the router's to compute.
    """
    out: dict[str, str] = {}
    node_request_id = None
    for name, value in upstream.items():
        key = name.lower()
        if key in _PASSED or key.startswith(_PASSED_PREFIXES):
            out.setdefault(key, value)
        elif key in _NODE_REQUEST_ID_SOURCES and node_request_id is None:
            node_request_id = value
            if _REQUEST_ID_RE.match(value):
                out[NODE_REQUEST_ID] = value
    if "connection" in upstream:  # rare: most nodes send none, or a bare keep-alive
        for value in upstream.getall("connection"):
            for token in value.split(","):
                hop = token.strip().lower()
                out.pop(hop, None)
                if hop in _NODE_REQUEST_ID_SOURCES:
                    out.pop(NODE_REQUEST_ID, None)
    return out
