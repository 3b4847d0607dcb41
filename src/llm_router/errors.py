"""Errors the router raises, and their OpenAI-shaped JSON.

Every error a client can see is a ``RouterError``; the app's exception handler turns it
into ``{"error": {"message", "type", "param", "code"}}`` with its status and headers.
Foreign errors (redis-py, aiohttp, httpx, pydantic) are translated at the boundary where
they occur with ``raise ... from exc``; none of them reaches a client as a traceback.

    RouterError                        500 internal_error
    ├── InvalidRequest                 400 invalid_request_error   (names the ``param``)
    │   └── BodyTooLarge               413 request_too_large
    ├── AuthError                      401 invalid_api_key
    │   └── Forbidden                  403 permission_denied
    ├── NotFound                       404 not_found
    │   ├── ModelNotFound              404 model_not_found
    │   └── NodeNotFound               404 node_not_found
    ├── RateLimited                    429 rate_limit_exceeded    (Retry-After)
    │   └── QueueFull                  429 queue_full             (Retry-After)
    ├── UpstreamError                  502 upstream_error
    │   └── NodeModelsFetchFailed      502 node_models_unreachable
    ├── ServiceUnavailable             503 service_unavailable    (Retry-After)
    │   ├── NoCapableNodes             503 no_capable_nodes       (Retry-After)
    │   ├── StateStoreUnavailable      503 state_store_unavailable
    │   └── ShuttingDown               503 shutting_down
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

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.code, self.param)


def error_body(
    message: str, error_type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


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
