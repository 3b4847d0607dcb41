"""Turning request bodies into validated models, with errors that name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from llm_router.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("Request body is empty; expected a JSON object")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        # json.loads recurses once per nesting level; no protocol body nests this deep.
        raise InvalidRequest("Request body is nested too deeply") from exc
    if not isinstance(value, dict):
        raise InvalidRequest("Request body must be a JSON object")
    return value


def validate(model: type[M], raw: bytes) -> M:
    data = parse_json_object(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"]
        if first["type"] == "enum" and "expected" in first.get("ctx", {}):
            message = f"must be one of {first['ctx']['expected']}"
        raise InvalidRequest(f"Invalid '{param}': {message}", param=param) from exc
