"""The proxied endpoints in the router's OpenAPI document, built from the endpoint table.

The handlers are raw ASGI (Litestar cannot describe them), so each row gets its operation
here: the body it takes (a JSON object with ``model``, or a form with a ``model`` field and
a file), the stored-response id in its path, and errors in its dialect.
"""

from __future__ import annotations

from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    RequestBody,
    Schema,
)

from llm_router.routing.endpoints import Dialect, Endpoint, ModelFrom, routes

_STRING = Schema(type=OpenAPIType.STRING)
_OPENAI_ERROR = Schema(
    type=OpenAPIType.OBJECT,
    required=["error"],
    properties={
        "error": Schema(
            type=OpenAPIType.OBJECT,
            properties={"message": _STRING, "type": _STRING, "param": _STRING, "code": _STRING},
        )
    },
)
_ANTHROPIC_ERROR = Schema(
    type=OpenAPIType.OBJECT,
    required=["type", "error"],
    properties={
        "type": _STRING,
        "error": Schema(type=OpenAPIType.OBJECT, properties={"type": _STRING, "message": _STRING}),
    },
)
_ERRORS = {Dialect.OPENAI: _OPENAI_ERROR, Dialect.ANTHROPIC: _ANTHROPIC_ERROR}
_JSON_BODY = Schema(
    type=OpenAPIType.OBJECT,
    required=["model"],
    properties={"model": _STRING},
    additional_properties=True,
)
_FORM_BODY = Schema(
    type=OpenAPIType.OBJECT,
    required=["model", "file"],
    properties={
        "model": _STRING,
        "file": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
    },
)


def _request_body(endpoint: Endpoint) -> RequestBody | None:
    if endpoint.model_from is ModelFrom.RESPONSE_ID:
        return None
    if endpoint.model_from is ModelFrom.FORM:
        content = {"multipart/form-data": OpenAPIMediaType(schema=_FORM_BODY)}
    else:
        content = {"application/json": OpenAPIMediaType(schema=_JSON_BODY)}
    return RequestBody(content=content, required=True)


def _operation(endpoint: Endpoint) -> Operation:
    error = OpenAPIResponse(
        description=f"An error, in the {endpoint.dialect} API's shape",
        content={"application/json": OpenAPIMediaType(schema=_ERRORS[endpoint.dialect])},
    )
    parameters: list[Parameter | Reference] | None = None
    if endpoint.model_from is ModelFrom.RESPONSE_ID:
        parameters = [Parameter(name="response_id", param_in="path", required=True, schema=_STRING)]
    return Operation(
        operation_id=endpoint.name,
        summary=endpoint.summary,
        description=(
            f"Proxied to a node serving the model ({endpoint.model_from.value}); "
            f"endpoint family '{endpoint.family}'."
        ),
        tags=["proxied"],
        parameters=parameters,
        request_body=_request_body(endpoint),
        responses={
            "200": OpenAPIResponse(description="The node's answer, passed through unchanged"),
            "default": error,
        },
    )


def document_proxied(openapi: OpenAPI) -> None:
    """Add every proxied endpoint to ``openapi`` (before the document is first served)."""
    paths = openapi.paths if openapi.paths is not None else {}
    for path, rows in routes().items():
        item = PathItem()
        for row in rows:
            setattr(item, row.method.lower(), _operation(row))
        paths[path] = item
    openapi.paths = paths
