"""Affinity keys: what makes a request a continuation of an earlier one.

A runtime's prompt cache holds the conversation it served last; sending the next turn back
to it saves recomputing the whole history. The replica derives a few keys from the body it
already parsed, the acquire script looks them up as pins in Redis (``{llmr}:pin:<key>``) and
points them at the node it picks. Keys, most specific first:

- ``x-session-id``: the client says which conversation this is. It is then the only key.
- ``previous_response_id``: the response this one continues.
- the opening: the conversation's text up to the end of its first user message (system
  prompt included). It is the same on every turn of a conversation, however long the
  history grows, and differs between conversations that share only a system prompt.
- prefix blocks: the conversation's (or prompt's) text cut into fixed 1 KiB blocks from
  the start, the first two full ones, each key hashing every block up to it. Full blocks of
  a prefix are the same in every request that extends it, so a new conversation that shares
  a long system prompt (or a completion prompt extended turn by turn) finds the node whose
  cache holds that prefix. A trailing partial block is left out: the next turn extends it,
  so its hash would never match again.

Every key hashes the model id too: the same conversation on another model is another cache.
The text is each message's role and content with separators that cannot occur in JSON text
(so two message lists can only share a prefix when they share their leading messages).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from llm_router.state.scripts import NO_AFFINITY, Affinity

BLOCK_BYTES = 1024
MAX_BLOCKS = 2
#: Beyond this the opening is specific enough: two conversations sharing 64 KiB of opening
#: share that much cache anyway, and the hash stays cheap whatever the body.
OPENING_MAX_BYTES = 64 * 1024

SESSION_HEADER = "x-session-id"
#: Request header: ``off`` opts a request out (no pin read or written). The response header
#: of the same name says what affinity did: hit, moved or new.
AFFINITY_HEADER = "x-llm-router-affinity"

#: Endpoints whose bodies carry a prompt a runtime caches.
PREFIX_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
)

_ROLE_END = b"\x1f"
_MESSAGE_END = b"\x1e"


def _key(kind: bytes, model: str, data: bytes) -> str:
    h = hashlib.blake2b(kind + b"\x00" + model.encode() + b"\x00", digest_size=12)
    h.update(data)
    return h.hexdigest()


def _content(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value)


def _segments(path: str, payload: Mapping[str, Any]) -> Iterator[tuple[bytes, bool]]:
    """(text, ends the opening) for each leading piece of the request's prompt, in order."""
    for field in ("system", "instructions"):
        if payload.get(field):
            yield _content(payload[field]) + _MESSAGE_END, False
    items = payload.get("messages")
    if items is None and path == "/v1/responses":
        items = payload.get("input")
    if isinstance(items, str):
        yield b"user" + _ROLE_END + items.encode() + _MESSAGE_END, True
        return
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                role = str(item.get("role", ""))
                yield (
                    role.encode() + _ROLE_END + _content(item.get("content")) + _MESSAGE_END,
                    (role == "user"),
                )
            else:
                yield _content(item) + _MESSAGE_END, False
        return
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompt = prompt[0]  # a batch of prompts: key on the first
    if prompt is not None:
        yield _content(prompt), False


def _prefix_keys(path: str, model: str, payload: Mapping[str, Any]) -> list[str]:
    wanted = BLOCK_BYTES * MAX_BLOCKS
    text = bytearray()
    opening: bytes | None = None
    for segment, ends_opening in _segments(path, payload):
        text += segment
        if opening is None and ends_opening:
            opening = bytes(text[:OPENING_MAX_BYTES])
        if opening is not None and len(text) >= wanted:
            break
    keys = [] if opening is None else [_key(b"o", model, opening)]
    blocks = min(len(text) // BLOCK_BYTES, MAX_BLOCKS)
    keys += [_key(b"b", model, bytes(text[: n * BLOCK_BYTES])) for n in range(blocks, 0, -1)]
    return keys


@dataclass(frozen=True)
class AffinityPolicy:
    enabled: bool
    ttl_ms: int
    #: Utilisation units (1e6 = a whole node), as the acquire script scores load.
    margin: int

    def for_request(
        self, path: str, model: str, payload: Mapping[str, Any], headers: Mapping[str, str]
    ) -> Affinity:
        if not self.enabled or headers.get(AFFINITY_HEADER, "").lower() == "off":
            return NO_AFFINITY
        session = headers.get(SESSION_HEADER)
        if session:
            keys = [_key(b"s", model, session.encode())]
        else:
            keys = []
            previous = payload.get("previous_response_id")
            if isinstance(previous, str) and previous:
                keys.append(_key(b"r", model, previous.encode()))
            if path in PREFIX_PATHS:
                keys += _prefix_keys(path, model, payload)
        if not keys:
            return NO_AFFINITY
        return Affinity(keys=tuple(keys), ttl_ms=self.ttl_ms, margin=self.margin)
