"""The simulated runtime's answers for the endpoints beyond chat, completions, embeddings.

Pure functions from a request body to the payload (or the stream's events) a real runtime
would send, in each API's own shape: OpenAI Responses, Anthropic Messages, Jina/Cohere
rerank, vLLM score, audio and images. Deterministic, like the rest of the simulation.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from typing import Any

#: A 1x1 transparent PNG: what every simulated image looks like.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def count_words(value: Any) -> int:
    """A token count good enough for a simulation: words in every string inside ``value``."""
    if isinstance(value, str):
        return max(1, len(value.split()))
    if isinstance(value, list):
        return sum(count_words(v) for v in value) or 1
    if isinstance(value, dict):  # a message's role or a part's type is not text
        return sum(count_words(v) for k, v in value.items() if k not in ("role", "type")) or 1
    return 1


def _relevance(model: str, query: str, text: str) -> float:
    digest = hashlib.sha256(f"{model}\x00{query}\x00{text}".encode()).digest()
    overlap = len(set(query.lower().split()) & set(text.lower().split()))
    return round(min(1.0, overlap * 0.25 + digest[0] / 1020), 6)


# -- OpenAI Responses ---------------------------------------------------------------------


def response_object(
    ident: str, model: str, text: str, body: dict[str, Any], *, status: str = "completed"
) -> dict[str, Any]:
    output_tokens = max(1, len(text.split()))
    input_tokens = count_words(body.get("input", ""))
    message = {
        "type": "message",
        "id": "msg_" + ident.removeprefix("resp_"),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    return {
        "id": ident,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": [message] if status == "completed" else [],
        "previous_response_id": body.get("previous_response_id"),
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "store": body.get("store", True) is not False,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
    }


def response_events(done: dict[str, Any], tokens: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The Responses API's stream for ``done``: created, one delta per token, completed."""
    started = {**done, "status": "in_progress", "output": []}
    item = done["output"][0]
    item_id = item["id"]
    text = "".join(tokens)
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
        ),
        (
            "response.content_part.added",
            {
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            },
        ),
    ]
    for token in tokens:
        events.append(
            (
                "response.output_text.delta",
                {"item_id": item_id, "output_index": 0, "content_index": 0, "delta": token},
            )
        )
    events += [
        (
            "response.output_text.done",
            {"item_id": item_id, "output_index": 0, "content_index": 0, "text": text},
        ),
        (
            "response.content_part.done",
            {
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": item["content"][0],
            },
        ),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": done}),
    ]
    return [
        (kind, {"type": kind, "sequence_number": n, **data})
        for n, (kind, data) in enumerate(events)
    ]


# -- Anthropic Messages -------------------------------------------------------------------


def message_object(ident: str, model: str, text: str, body: dict[str, Any]) -> dict[str, Any]:
    limit = body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise BadRequest("max_tokens: Field required (a positive integer)", "max_tokens")
    words = text.split()
    stop = "end_turn"
    if len(words) > limit:
        text, stop = " ".join(words[:limit]), "max_tokens"
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": count_words(body.get("messages", "")),
            "output_tokens": max(1, len(text.split())),
        },
    }


def message_events(done: dict[str, Any], tokens: list[str]) -> list[tuple[str, dict[str, Any]]]:
    usage = done["usage"]
    start = {**done, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 0}}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": start}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {}),
    ]
    for token in tokens:
        events.append(
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": token}})
        )
    events += [
        ("content_block_stop", {"index": 0}),
        (
            "message_delta",
            {
                "delta": {"stop_reason": done["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        ("message_stop", {}),
    ]
    return [(kind, {"type": kind, **data}) for kind, data in events]


# -- rerank, score, audio, images ---------------------------------------------------------


def _documents(body: dict[str, Any]) -> list[str]:
    docs = body.get("documents")
    if not isinstance(docs, list) or not docs:
        raise BadRequest("'documents' must be a non-empty list", "documents")
    texts = []
    for doc in docs:
        if isinstance(doc, dict) and isinstance(doc.get("text"), str):
            texts.append(doc["text"])
        elif isinstance(doc, str):
            texts.append(doc)
        else:
            raise BadRequest("each document must be a string or {'text': ...}", "documents")
    return texts


def rerank(ident: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
    query = body.get("query")
    if not isinstance(query, str):
        raise BadRequest("'query' must be a string", "query")
    texts = _documents(body)
    top_n = body.get("top_n", len(texts))
    if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1:
        raise BadRequest("'top_n' must be a positive integer", "top_n")
    scored = sorted(
        ({"index": i, "relevance_score": _relevance(model, query, t), "document": {"text": t}}
         for i, t in enumerate(texts)),
        key=lambda r: -float(r["relevance_score"]),  # type: ignore[arg-type]
    )  # fmt: skip
    return {
        "id": ident,
        "model": model,
        "results": scored[:top_n],
        "usage": {"total_tokens": count_words([query, *texts])},
    }


def score(ident: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
    first, second = body.get("text_1"), body.get("text_2")
    if not isinstance(first, str):
        raise BadRequest("'text_1' must be a string", "text_1")
    seconds = [second] if isinstance(second, str) else second
    if not isinstance(seconds, list) or not all(isinstance(s, str) for s in seconds):
        raise BadRequest("'text_2' must be a string or a list of strings", "text_2")
    return {
        "id": ident,
        "object": "list",
        "model": model,
        "data": [
            {"index": i, "object": "score", "score": _relevance(model, first, s)}
            for i, s in enumerate(seconds)
        ],
        "usage": {"prompt_tokens": count_words([first, *seconds])},
    }


def transcript(node: str, model: str, filename: str, audio: bytes, translate: bool) -> str:
    verb = "Translated" if translate else "Transcribed"
    return f"{verb} {len(audio)} bytes of {filename} on {node} with {model}."


def speech(text: str) -> bytes:
    """A short silent WAV whose length follows the text: real audio bytes, not JSON."""
    samples = 80 * max(1, len(text))
    data = b"\x00\x00" * samples
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
    return header + b"data" + struct.pack("<I", len(data)) + data


def images(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string", "prompt")
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
        raise BadRequest("'n' must be an integer between 1 and 10", "n")
    image = base64.b64encode(PNG_1X1).decode()
    return {
        "created": int(time.time()),
        "data": [{"b64_json": image, "revised_prompt": prompt} for _ in range(n)],
    }
