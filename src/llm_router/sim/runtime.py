"""A simulated OpenAI-compatible inference runtime (raw ASGI, cheap enough for benchmarks).

It answers every endpoint of the router's table (``routing.endpoints``): chat, completions,
embeddings, Responses (stored and answered by id, as vLLM does), Anthropic Messages,
rerank and score, audio (multipart uploads, speech as audio bytes) and images; told to, it
declines whole endpoint families with 501, as a runtime built without them does.
Replies are deterministic: the text names the node and echoes the requested model id,
embeddings are derived from a hash of the input. Timing follows ``ttft_ms`` (also for
non-streaming replies) and ``tokens_per_s``. It answers 429 beyond ``max_concurrency`` and,
when told to, fails: HTTP 500, a dropped connection before any byte, or death mid-stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import math
import struct
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_router.api.form import form_parts
from llm_router.asgi_util import (
    JSON_HEADERS,
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    abort_connection,
    lifespan,
    read_body,
    send_error,
    send_json,
)
from llm_router.errors import InvalidRequest
from llm_router.node.settings import FailMode
from llm_router.routing.endpoints import Endpoint, match, serves
from llm_router.sim import replies

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_TOKENS_CAP = 4096
EMBEDDING_DIM = 16
_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
]


@dataclass(frozen=True)
class SimConfig:
    node_name: str
    models: Sequence[str]
    ttft_ms: float = 20.0
    tokens_per_s: float = 200.0
    max_concurrency: int = 4
    max_tokens_default: int = 16
    fail_mode: FailMode = FailMode.NONE
    fail_rate: float = 1.0
    fail_after_n: int = 0
    #: Endpoint families (or single "METHOD /path" rows) answered 501 ("not implemented").
    refuse_families: frozenset[str] = frozenset()
    created: int = field(default_factory=lambda: int(time.time()))


def tokens_for(node: str, model: str, count: int) -> list[str]:
    """The deterministic reply: the first token names node and model, then filler words."""
    first = f"Hello from {node} serving {model}."
    return [first, *(f" {_FILLER[i % len(_FILLER)]}" for i in range(count - 1))]


def embedding_for(model: str, text: str, dimensions: int = EMBEDDING_DIM) -> list[float]:
    """A unit vector derived from sha256(model, text): same input, same vector, anywhere."""
    values: list[float] = []
    for block in itertools.count():
        digest = hashlib.sha256(f"{model}\x00{text}\x00{block}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        if len(values) >= dimensions:
            break
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


_Bad = replies.BadRequest


def _requested_tokens(body: dict[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _Bad(f"'{key}' must be a positive integer", key)
        return min(value, MAX_TOKENS_CAP)
    return default


def _embedding_inputs(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(x, str) for x in raw):
            return list(raw)
        if all(isinstance(x, int) for x in raw):
            return [json.dumps(raw)]
        if all(isinstance(x, list) for x in raw):
            return [json.dumps(x) for x in raw]
    raise _Bad("'input' must be a string, a list of strings or a list of token arrays", "input")


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def _parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """A JSON object, or a multipart form as {field: text, file field: (name, bytes)}."""
    if content_type.lower().startswith("multipart/form-data"):
        try:
            parts = form_parts(raw, content_type)
        except InvalidRequest as exc:
            raise ValueError(exc.message) from exc
        return {
            name: (filename, data) if filename is not None else data.decode(errors="replace")
            for name, (filename, data) in parts.items()
        }
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


async def _client_left(receive: Receive) -> None:
    # The body has been read: the next message can only be the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(reply: Coroutine[Any, Any, None], receive: Receive) -> None:
    """Run ``reply``, but stop generating as soon as the client is gone, like a real runtime:
    an abandoned request must not keep a slot busy."""
    work = asyncio.ensure_future(reply)
    gone = asyncio.ensure_future(_client_left(receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if not work.cancelled():
        work.result()


class SimRuntime:
    """The ASGI app. One instance per simulated node; its counters are that node's."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.active = 0
        self.requests = 0
        self._ids = itertools.count(1)
        # Node-unique ids: two simulated nodes never mint the same response id.
        self._id_prefix = hashlib.sha256(config.node_name.encode()).hexdigest()[:8]
        self.stored: dict[str, dict[str, Any]] = {}

    # -- dispatch ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            await send_json(send, 200, self._models())
        elif method == "GET" and path in {"/health", "/healthz"}:
            await send_json(send, 200, {"status": "ok", "active": self.active})
        else:
            await self._endpoint(scope, receive, send)

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        found = match(method, path)
        if found is None:
            if serves(path):
                await send_error(send, 405, f"{method} not allowed", "invalid_request_error", None)
            else:
                await send_error(send, 404, "File Not Found", "not_found_error", None)
            return
        endpoint, path_id = found
        refused = self.config.refuse_families
        if endpoint.family in refused or f"{endpoint.method} {endpoint.path}" in refused:
            await send_error(
                send,
                501,
                f"{endpoint.family} is not supported by this server",
                "not_supported",
                None,
            )
            return
        if path_id:
            await self._by_id(endpoint, path_id, receive, send)
            return
        await self._generate(endpoint, scope, receive, send)

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": self.config.created, "owned_by": "sim"}
                for m in self.config.models
            ],
        }

    def _should_fail(self, n: int) -> bool:
        """Deterministic failure schedule: after ``fail_after_n`` good requests, a
        ``fail_rate`` fraction of the rest fails, evenly spread (rate 0.5 → every other)."""
        cfg = self.config
        if cfg.fail_mode is FailMode.NONE or n <= cfg.fail_after_n:
            return False
        k = n - cfg.fail_after_n
        return math.floor(k * cfg.fail_rate) > math.floor((k - 1) * cfg.fail_rate)

    async def _generate(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send
    ) -> None:
        path = endpoint.path
        try:
            raw = await read_body(receive, MAX_BODY_BYTES)
        except BodyTooLarge:
            await send_error(send, 413, "body too large", "invalid_request_error", None)
            return
        except ClientGone:
            return
        try:
            body = _parse_body(raw, _header(scope, b"content-type"))
        except ValueError as exc:
            await send_error(send, 400, str(exc), "invalid_request_error", None)
            return
        model = body.get("model")
        if not isinstance(model, str) or model not in self.config.models:
            await send_error(
                send,
                404,
                f"model {model!r} not found on this runtime",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
            return
        if self.active >= self.config.max_concurrency:
            await send_error(
                send,
                429,
                f"{self.config.node_name} is busy "
                f"({self.active}/{self.config.max_concurrency} requests running)",
                "rate_limit_error",
                "rate_limit_exceeded",
            )
            return
        self.requests += 1
        failing = self._should_fail(self.requests)
        if failing and self.config.fail_mode is FailMode.HTTP_500:
            await send_error(send, 500, "simulated runtime failure", "server_error", "sim_failure")
            return
        if failing and self.config.fail_mode is FailMode.DROP:
            await abort_connection(receive, send)
            return
        self.active += 1
        try:
            if path == "/v1/embeddings":
                reply = self._embeddings(body, model, receive, send, failing)
            elif path in ("/v1/chat/completions", "/v1/completions"):
                reply = self._completion(path, body, model, receive, send, failing)
            else:
                version = _header(scope, b"anthropic-version")
                reply = self._other(endpoint, body, model, receive, send, failing, version)
            await _unless_client_leaves(reply, receive)
        except _Bad as bad:
            await send_error(send, 400, bad.message, "invalid_request_error", None, bad.param)
        finally:
            self.active -= 1

    # -- replies -------------------------------------------------------------------------

    def _new_id(self, kind: str) -> str:
        return f"{kind}_{self._id_prefix}{next(self._ids):08d}"

    async def _by_id(self, endpoint: Endpoint, ident: str, receive: Receive, send: Send) -> None:
        """GET, DELETE and cancel of a stored response: only the node that made it knows it."""
        with contextlib.suppress(BodyTooLarge, ClientGone):
            await read_body(receive, MAX_BODY_BYTES)
        stored = self.stored.get(ident)
        if stored is None:
            await send_error(
                send, 404, f"Response with id '{ident}' not found.", "invalid_request_error", None
            )
            return
        if endpoint.method == "DELETE":
            del self.stored[ident]
            await send_json(send, 200, {"id": ident, "object": "response", "deleted": True})
            return
        if endpoint.path.endswith("/cancel"):
            stored["status"] = "cancelled"
        await send_json(send, 200, stored, [(b"x-sim-node", self.config.node_name.encode())])

    async def _other(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        model: str,
        receive: Receive,
        send: Send,
        failing: bool,
        anthropic_version: str,
    ) -> None:
        """Every endpoint past chat, completions and embeddings."""
        await asyncio.sleep(self.config.ttft_ms / 1000.0)
        headers = [(b"x-sim-node", self.config.node_name.encode())]
        if anthropic_version:
            # Echoed so that a test can see the header crossed the router and the agent.
            headers.append((b"anthropic-version", anthropic_version.encode("latin-1")))
        path = endpoint.path
        count = _requested_tokens(body, self.config.max_tokens_default)
        if path == "/v1/messages":  # Anthropic's max_tokens is a cap, not a length
            count = min(count, self.config.max_tokens_default)
        tokens = tokens_for(self.config.node_name, model, count)
        if path == "/v1/responses":
            previous = body.get("previous_response_id")
            if previous is not None and previous not in self.stored:
                message = f"Response with id '{previous}' not found."
                await send_error(send, 404, message, "invalid_request_error", None)
                return
            if previous is not None:
                tokens[0] += f" Continuing {previous}."
            done = replies.response_object(self._new_id("resp"), model, "".join(tokens), body)
            if done["store"]:
                self.stored[done["id"]] = done
            if body.get("stream") is True:
                await self._events(
                    receive, send, replies.response_events(done, tokens), failing, headers
                )
            else:
                await send_json(send, 200, done, headers)
        elif path == "/v1/messages":
            done = replies.message_object(self._new_id("msg"), model, "".join(tokens), body)
            if body.get("stream") is True:
                await self._events(
                    receive, send, replies.message_events(done, tokens), failing, headers
                )
            else:
                await send_json(send, 200, done, headers)
        elif path == "/v1/audio/speech":
            audio = replies.speech(str(body.get("input", "")))
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"audio/wav"), *headers],
                }
            )
            await send({"type": "http.response.body", "body": audio})
        elif path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
            upload = body.get("file")
            if not isinstance(upload, tuple):
                raise _Bad("'file' must be an uploaded file", "file")
            text = replies.transcript(
                self.config.node_name, model, upload[0] or "audio", upload[1], "transl" in path
            )
            if body.get("response_format") == "text":
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"), *headers],
                    }
                )
                await send({"type": "http.response.body", "body": text.encode()})
            else:
                await send_json(send, 200, {"text": text}, headers)
        else:
            await send_json(send, 200, self._payload(path, body, model), headers)

    def _payload(self, path: str, body: dict[str, Any], model: str) -> dict[str, Any]:
        if path in ("/v1/rerank", "/rerank"):
            return replies.rerank(self._new_id("rerank"), model, body)
        if path == "/v1/score":
            return replies.score(self._new_id("score"), model, body)
        if path == "/v1/images/generations":
            return replies.images(body)
        if path == "/v1/messages/count_tokens":
            return {"input_tokens": replies.count_words(body.get("messages", ""))}
        # /v1/responses/input_tokens
        return {
            "object": "response.input_tokens",
            "input_tokens": replies.count_words(body.get("input", "")),
        }

    async def _events(
        self,
        receive: Receive,
        send: Send,
        events: list[tuple[str, dict[str, Any]]],
        failing: bool,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        """A named-event SSE stream (Responses and Messages); a failing one dies midway."""
        await send(
            {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + headers}
        )
        gap = 1.0 / self.config.tokens_per_s
        for i, (kind, data) in enumerate(events):
            if failing and i == len(events) // 2:
                await abort_connection(receive, send)
                return
            line = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
            await send({"type": "http.response.body", "body": line.encode(), "more_body": True})
            if kind.endswith("delta"):
                await asyncio.sleep(gap)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _completion(
        self,
        path: str,
        body: dict[str, Any],
        model: str,
        receive: Receive,
        send: Send,
        failing: bool,
    ) -> None:
        chat = path == "/v1/chat/completions"
        count = _requested_tokens(body, self.config.max_tokens_default)
        if path == "/v1/messages":  # Anthropic's max_tokens is a cap, not a length
            count = min(count, self.config.max_tokens_default)
        tokens = tokens_for(self.config.node_name, model, count)
        finish = "length" if "max_tokens" in body or "max_completion_tokens" in body else "stop"
        stream = body.get("stream") is True
        ident = f"{'chatcmpl' if chat else 'cmpl'}-sim-{next(self._ids)}"
        created = int(time.time())
        usage = {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": count + 1}
        gap = 1.0 / self.config.tokens_per_s
        base = {
            "id": ident,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": f"sim-{self.config.node_name}",
        }
        extra_headers = [(b"x-sim-node", self.config.node_name.encode())]
        await asyncio.sleep(self.config.ttft_ms / 1000.0)
        if not stream:
            await asyncio.sleep(gap * (count - 1))
            text = "".join(tokens)
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text, "logprobs": None}
            )
            choice["finish_reason"] = finish
            payload = {
                **base,
                "object": "chat.completion" if chat else "text_completion",
                "choices": [choice],
                "usage": usage,
            }
            if failing:
                await self._die_midway(receive, send, json.dumps(payload).encode(), extra_headers)
                return
            await send_json(send, 200, payload, extra_headers)
            return

        await send(
            {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + extra_headers}
        )

        async def event(data: dict[str, Any]) -> None:
            line = b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": line, "more_body": True})

        if chat:
            await event(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ],
                }
            )
        for i, token in enumerate(tokens):
            if i:
                await asyncio.sleep(gap)
            delta: dict[str, Any] = (
                {"index": 0, "delta": {"content": token}, "finish_reason": None}
                if chat
                else {"index": 0, "text": token, "logprobs": None, "finish_reason": None}
            )
            await event({**base, "choices": [delta]})
            if failing and i == len(tokens) // 2:
                await abort_connection(receive, send)
                return
        end: dict[str, Any] = (
            {"index": 0, "delta": {}, "finish_reason": finish}
            if chat
            else {"index": 0, "text": "", "logprobs": None, "finish_reason": finish}
        )
        await event({**base, "choices": [end]})
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            await event({**base, "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _embeddings(
        self, body: dict[str, Any], model: str, receive: Receive, send: Send, failing: bool
    ) -> None:
        texts = _embedding_inputs(body.get("input"))
        dims = body.get("dimensions", EMBEDDING_DIM)
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 4096:
            raise _Bad("'dimensions' must be an integer between 1 and 4096", "dimensions")
        as_base64 = body.get("encoding_format") == "base64"
        await asyncio.sleep(self.config.ttft_ms / 1000.0)
        data = []
        for index, text in enumerate(texts):
            vector = embedding_for(model, text, dims)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(max(1, len(t.split())) for t in texts)
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        headers = [(b"x-sim-node", self.config.node_name.encode())]
        if failing:
            await self._die_midway(receive, send, json.dumps(payload).encode(), headers)
            return
        await send_json(send, 200, payload, headers)

    @staticmethod
    async def _die_midway(
        receive: Receive, send: Send, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    *JSON_HEADERS,
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
        )
        await abort_connection(receive, send)
