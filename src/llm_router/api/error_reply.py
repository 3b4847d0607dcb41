"""What the router answers for an error raised while serving a request: status, body in the
dialect of the endpoint it happened on (Anthropic's paths speak Anthropic, routed or not),
and headers. One function for the Litestar handlers and the proxied fast path alike."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from litestar.exceptions import HTTPException

from llm_router.errors import RouterError, dialect_body
from llm_router.routing.endpoints import dialect_of

log = logging.getLogger("llm_router.app")

_HTTP_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}

_NO_HEADERS: Mapping[str, str] = {}


def error_reply(
    method: str, path: str, exc: Exception
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    """(status, body, headers) for ``exc``; anything not ours is logged and answered 500."""
    if isinstance(exc, RouterError):
        return exc.status_code, exc.body(dialect_of(path)), exc.headers
    if isinstance(exc, HTTPException):
        status = exc.status_code
        error_type, code = _HTTP_ERROR_TYPES.get(status, ("server_error", "internal_error"))
        message = exc.detail if status < 500 else "internal error"
        return (
            status,
            dialect_body(dialect_of(path), message, status, error_type, code),
            _NO_HEADERS,
        )
    log.exception("unhandled error on %s %s", method, path, exc_info=exc)
    body = dialect_body(dialect_of(path), "internal error", 500, "server_error", "internal_error")
    return 500, body, _NO_HEADERS
