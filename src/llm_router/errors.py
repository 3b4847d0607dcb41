"""Errors the router raises, and their JSON in the client's API dialect.

Every error a client can see is a ``RouterError``; the app's exception handler turns it
into ``{"error": {"message", "type", "param", "code"}}`` (OpenAI) or, on the Anthropic
endpoints, ``{"type": "error", "error": {"type", "message"}}``, with its status and headers.
Foreign errors (redis-py, aiohttp, httpx, pydantic) are translated at the boundary where
they occur with ``raise ... from exc``; none of them reaches a client as a traceback.

    RouterError                        500 internal_error
    ├── InvalidRequest                 400 invalid_request_error   (names the ``param``)
    │   ├── BodyTooLarge               413 request_too_large
    │   ├── MethodNotAllowed           405 method_not_allowed
    │   └── UnsupportedMediaType       415 unsupported_media_type
    ├── AuthError                      401 invalid_api_key
    │   └── Forbidden                  403 permission_denied
    ├── NotFound                       404 not_found
    │   ├── ModelNotFound              404 model_not_found
    │   ├── NodeNotFound               404 node_not_found
    │   └── ResponseNotFound           404 response_not_found
    ├── RateLimited                    429 rate_limit_exceeded    (Retry-After)
    │   ├── QueueFull                  429 queue_full             (Retry-After)
    │   └── KeyInFlightLimit           429 key_in_flight_limit    (Retry-After)
    ├── UpstreamError                  502 upstream_error
    │   └── NodeModelsFetchFailed      502 node_models_unreachable
    ├── ServiceUnavailable             503 service_unavailable    (Retry-After)
    │   ├── NoCapableNodes             503 no_capable_nodes       (Retry-After)
    │   ├── StateStoreUnavailable      503 state_store_unavailable
    │   └── ShuttingDown               503 shutting_down
    ├── NotImplementedByFleet          501 endpoint_not_supported
    ├── GatewayTimeout                 504 upstream_timeout
    │   └── QueueTimeout               504 queue_timeout
    └── ClientClosedRequest            499 client_closed_request (nobody is left to read it)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class RouterError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self, dialect: str = "openai") -> dict[str, Any]:
        if dialect == "anthropic":
            return anthropic_error_body(self.message, self.status_code)
        return error_body(self.message, self.error_type, self.code, self.param)


def error_body(
    message: str, error_type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


#: Anthropic's error types by status (their API documents exactly these).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error_body(message: str, status: int) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``, as the Anthropic API answers."""
    kind = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def dialect_body(
    dialect: str, message: str, status: int, error_type: str, code: str | None
) -> dict[str, Any]:
    """An error object in the client's API shape, for errors that are not ``RouterError``s."""
    if dialect == "anthropic":
        return anthropic_error_body(message, status)
    return error_body(message, error_type, code)


class InvalidRequest(RouterError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class BodyTooLarge(InvalidRequest):
    status_code = 413
    code = "request_too_large"


class AuthError(RouterError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(AuthError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class NotFound(RouterError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class NodeNotFound(NotFound):
    code = "node_not_found"


class ResponseNotFound(NotFound):
    code = "response_not_found"


class UnsupportedMediaType(InvalidRequest):
    status_code = 415
    code = "unsupported_media_type"


class MethodNotAllowed(InvalidRequest):
    status_code = 405
    code = "method_not_allowed"


class NotImplementedByFleet(RouterError):
    """Every node serving the model declined this endpoint (it answered 404/405/501)."""

    status_code = 501
    error_type = "invalid_request_error"
    code = "endpoint_not_supported"


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, round(seconds)))}


class RateLimited(RouterError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, param: str | None = None):
        super().__init__(message, param=param, headers=_retry_after(retry_after_s))


class QueueFull(RateLimited):
    code = "queue_full"


class KeyInFlightLimit(RateLimited):
    code = "key_in_flight_limit"


class UpstreamError(RouterError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class NodeModelsFetchFailed(UpstreamError):
    code = "node_models_unreachable"


class ServiceUnavailable(RouterError):
    status_code = 503
    error_type = "service_unavailable"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, param: str | None = None):
        super().__init__(message, param=param, headers=_retry_after(retry_after_s))


class NoCapableNodes(ServiceUnavailable):
    code = "no_capable_nodes"


class StateStoreUnavailable(ServiceUnavailable):
    code = "state_store_unavailable"


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"


class GatewayTimeout(RouterError):
    status_code = 504
    error_type = "timeout_error"
    code = "upstream_timeout"


class QueueTimeout(GatewayTimeout):
    code = "queue_timeout"


class ClientClosedRequest(RouterError):
    """The client went away while its request waited; what we answer is never read."""

    status_code = 499
    error_type = "invalid_request_error"
    code = "client_closed_request"
