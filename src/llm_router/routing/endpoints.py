"""The proxied endpoints, one row each.

Everything that differs between endpoints is a column here: where the model is, which
API's error shape the client expects, whether a node's answer carries a response id to
remember, and the family a node may decline ("this node does not do that"). The router's
raw-ASGI handlers, its OpenAPI document, the node agent's forwarded routes and the docs are
all built from ``ENDPOINTS``; adding an endpoint is adding a row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class Dialect(StrEnum):
    """The API a client speaks on an endpoint: the shape of errors and stream events."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


class ModelFrom(StrEnum):
    """Where a request names its model."""

    JSON = "json"  # the ``model`` member of a JSON object body
    FORM = "form"  # the ``model`` field of a multipart/form-data body (or a JSON body)
    RESPONSE_ID = "response_id"  # the stored response named in the path


JSON_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data",)
#: What a node may answer with (the media type only). Errors come back as JSON anywhere.
ANSWERS_JSON = ("application/json", "text/event-stream")
ANSWERS_AUDIO = ("application/octet-stream", "audio/", "text/event-stream", "application/json")
ANSWERS_TEXT = ("application/json", "text/plain", "text/vtt", "text/srt", "text/event-stream")


@dataclass(frozen=True)
class Endpoint:
    path: str
    method: str
    model_from: ModelFrom
    family: str
    summary: str
    dialect: Dialect = Dialect.OPENAI
    #: Request content types the endpoint takes; anything else is answered 415.
    content_types: tuple[str, ...] = JSON_TYPES
    #: Content types (or ``type/`` prefixes) a node's answer may have.
    answers: tuple[str, ...] = ANSWERS_JSON
    #: The node's answer creates a stored response whose id is remembered (→ that node).
    records_response: bool = False
    #: A ``previous_response_id`` in the body pins the request to the node holding it.
    follows_previous: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\\\{[a-z_]+\\\}", "(?P<id>[^/]+)", re.escape(self.path))
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))

    def may_answer(self, status: int, content_type: str) -> bool:
        """Whether a node's answer may reach the client: a success of a media type the
        endpoint gives, an empty 204, or an error (its body is the node's to shape)."""
        if not 200 <= status < 300 or status == 204:
            return True
        return any(content_type == t or (t.endswith("/") and content_type.startswith(t))
                   for t in self.answers)  # fmt: skip

    @property
    def name(self) -> str:
        return f"{self.method.lower()}{re.sub(r'[^a-z0-9]+', '_', self.path)}".rstrip("_")


_OA = Dialect.OPENAI
_AN = Dialect.ANTHROPIC
_J, _F, _R = ModelFrom.JSON, ModelFrom.FORM, ModelFrom.RESPONSE_ID

#: path, method, model from, family, summary, then per-row specifics.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/v1/chat/completions", "POST", _J, "chat", "Chat completion (OpenAI)"),
    Endpoint("/v1/completions", "POST", _J, "completions", "Text completion (OpenAI)"),
    Endpoint("/v1/embeddings", "POST", _J, "embeddings", "Embeddings (OpenAI)"),
    Endpoint(
        "/v1/responses",
        "POST",
        _J,
        "responses",
        "Create a response (OpenAI Responses API); previous_response_id goes to its node",
        records_response=True,
        follows_previous=True,
    ),
    Endpoint(
        "/v1/responses/input_tokens",
        "POST",
        _J,
        "responses",
        "Count a Responses request's input tokens",
    ),
    Endpoint("/v1/responses/{response_id}", "GET", _R, "responses", "Retrieve a stored response"),
    Endpoint("/v1/responses/{response_id}", "DELETE", _R, "responses", "Delete a stored response"),
    Endpoint(
        "/v1/responses/{response_id}/cancel",
        "POST",
        _R,
        "responses",
        "Cancel a background response",
    ),
    Endpoint(
        "/v1/audio/transcriptions",
        "POST",
        _F,
        "audio",
        "Transcribe an uploaded audio file (multipart/form-data)",
        content_types=FORM_TYPES,
        answers=ANSWERS_TEXT,
    ),
    Endpoint(
        "/v1/audio/translations",
        "POST",
        _F,
        "audio",
        "Translate an uploaded audio file into English (multipart/form-data)",
        content_types=FORM_TYPES,
        answers=ANSWERS_TEXT,
    ),
    Endpoint(
        "/v1/audio/speech",
        "POST",
        _J,
        "speech",
        "Text to speech (audio bytes)",
        answers=ANSWERS_AUDIO,
    ),
    Endpoint("/v1/images/generations", "POST", _J, "images", "Generate images"),
    Endpoint("/v1/messages", "POST", _J, "messages", "Create a message (Anthropic)", _AN),
    Endpoint("/v1/messages/count_tokens", "POST", _J, "messages", "Count a message's tokens", _AN),
    Endpoint("/v1/rerank", "POST", _J, "rerank", "Rerank documents (Jina/Cohere style)"),
    Endpoint("/rerank", "POST", _J, "rerank", "Rerank documents (unversioned path)"),
    Endpoint("/v1/score", "POST", _J, "rerank", "Score text pairs"),
)

#: Paths whose unknown sub-paths and methods still answer in a dialect other than OpenAI.
_DIALECT_PREFIXES = tuple((e.path, e.dialect) for e in ENDPOINTS if e.dialect is not Dialect.OPENAI)
_EXACT = {(e.method, e.path): e for e in ENDPOINTS if e.model_from is not ModelFrom.RESPONSE_ID}
_PATTERNED = tuple(e for e in ENDPOINTS if e.model_from is ModelFrom.RESPONSE_ID)


def match(method: str, path: str) -> tuple[Endpoint, str] | None:
    """The endpoint serving ``method path`` and the id in its path ("" when it has none)."""
    found = _EXACT.get((method, path))
    if found is not None:
        return found, ""
    for endpoint in _PATTERNED:
        if endpoint.method == method and (m := endpoint.pattern.match(path)):
            return endpoint, m["id"]
    return None


_STATIC_PATHS = frozenset(path for _method, path in _EXACT)


def serves(path: str) -> bool:
    """Whether ``path`` is a proxied endpoint's path, for some method (a set lookup for
    every path without an id)."""
    return path in _STATIC_PATHS or any(e.pattern.match(path) for e in _PATTERNED)


def routes() -> dict[str, tuple[Endpoint, ...]]:
    """Each distinct path (pattern) with the endpoints (one per method) served on it."""
    grouped: dict[str, list[Endpoint]] = {}
    for endpoint in ENDPOINTS:
        grouped.setdefault(endpoint.path, []).append(endpoint)
    return {path: tuple(rows) for path, rows in grouped.items()}


def dialect_of(path: str) -> Dialect:
    """The error dialect for anything the router answers on ``path``, routed or not."""
    for prefix, dialect in _DIALECT_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return dialect
    return Dialect.OPENAI


_MODEL_FROM_DOC = {
    ModelFrom.JSON: "JSON body `model`",
    ModelFrom.FORM: "form field `model` (multipart)",
    ModelFrom.RESPONSE_ID: "the stored response named in the path",
}


def markdown_table() -> str:
    """The endpoint table as ``docs/endpoints.md`` shows it (a test keeps the two equal)."""
    lines = [
        "| method | path | model from | dialect | family | also |",
        "|---|---|---|---|---|---|",
    ]
    for e in ENDPOINTS:
        also = [
            *(["`previous_response_id` goes to its node"] if e.follows_previous else []),
            *(["records the id of the response created"] if e.records_response else []),
            *([f"takes {', '.join(e.content_types)}"] if e.model_from is ModelFrom.FORM else []),
        ]
        lines.append(
            f"| `{e.method}` | `{e.path}` | {_MODEL_FROM_DOC[e.model_from]} | {e.dialect} "
            f"| {e.family} | {'; '.join(also) or '—'} |"
        )
    return "\n".join(lines) + "\n"
