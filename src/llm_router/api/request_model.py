"""Where a proxied request names its model (and the stored response it follows).

One function per ``ModelFrom`` of the endpoint table; each answers a clear 400 naming the
field when the body does not say what the endpoint needs.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from llm_router.api.form import form_field
from llm_router.errors import InvalidRequest, ResponseNotFound, UnsupportedMediaType
from llm_router.protocol import validate_model_id
from llm_router.routing.endpoints import Endpoint, ModelFrom

#: What a stored response id may look like (runtimes mint ``resp_<hex>`` and the like).
_RESPONSE_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,256}$")


# Read-only like the proxy's ``Call``, and not frozen for the same reason.
@dataclass(slots=True)
class Target:
    model: str
    response_id: str = ""  # route to the node holding this stored response
    #: The parsed JSON body, when it is one (affinity keys are read from it).
    payload: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("Request body is empty; expected a JSON object with 'model'")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("Request body must be a JSON object")
    return payload


def checked_model(model: object) -> str:
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", param="model")
    try:
        return validate_model_id(model)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid 'model': {exc}", param="model") from exc


def model_of(body: bytes) -> str:
    """The model of a JSON body."""
    return checked_model(_json_object(body).get("model"))


def checked_response_id(value: object, param: str | None) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}' must be a string", param=param)
    if not _RESPONSE_ID_RE.match(value):
        raise ResponseNotFound(f"No response found with id '{value[:300]}'", param=param)
    return value


def _from_json(endpoint: Endpoint, body: bytes, _ct: str) -> Target:
    payload = _json_object(body)
    model = checked_model(payload.get("model"))
    previous = payload.get("previous_response_id") if endpoint.follows_previous else None
    if previous is None:
        return Target(model, payload=payload)
    return Target(model, checked_response_id(previous, "previous_response_id"), payload)


def _from_form(endpoint: Endpoint, body: bytes, content_type: str) -> Target:
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json":
        return _from_json(endpoint, body, content_type)
    if media not in endpoint.content_types:
        raise UnsupportedMediaType(
            f"{endpoint.path} takes {' or '.join(endpoint.content_types)}, not '{media}'"
        )
    return Target(checked_model(form_field(body, content_type, "model")))


_READERS: dict[ModelFrom, Callable[[Endpoint, bytes, str], Target]] = {
    ModelFrom.JSON: _from_json,
    ModelFrom.FORM: _from_form,
}


def body_target(endpoint: Endpoint, body: bytes, content_type: str) -> Target:
    """What to route on, for an endpoint whose body names the model: nothing to await, so
    the common path makes no coroutine and matches no path pattern."""
    return _READERS[endpoint.model_from](endpoint, body, content_type)


async def target_of(
    endpoint: Endpoint,
    body: bytes,
    content_type: str,
    path_id: str,
    model_of_response: Callable[[str], Awaitable[str | None]],
) -> Target:
    """What to route on: the model, and the stored response to follow if any."""
    if endpoint.model_from is ModelFrom.RESPONSE_ID:
        response_id = checked_response_id(path_id, None)
        model = await model_of_response(response_id)
        if model is None:
            raise ResponseNotFound(f"No response found with id '{response_id}'")
        return Target(model, response_id)
    return body_target(endpoint, body, content_type)
