"""Finding the id of a stored response in a node's answer, plain or streamed.

A plain answer is the response object (``{"id": ...}``); a stream announces it in its
first event, ``response.created``, whose ``response`` member is the object. The stream
finder looks only until it has the id (or has seen enough bytes to give up), so relaying
the rest of the stream costs nothing.
"""

from __future__ import annotations

import orjson

#: Past this many bytes without a ``response.created`` event, stop looking.
_SNIFF_LIMIT = 64 * 1024


def id_of_object(content: bytes) -> str:
    """The ``id`` of a JSON response object, or "" when it has none."""
    try:
        return _id_in(orjson.loads(content))
    except orjson.JSONDecodeError:
        return ""


def _id_in(payload: object) -> str:
    ident = payload.get("id") if isinstance(payload, dict) else None
    return ident if isinstance(ident, str) and 0 < len(ident) <= 256 else ""


class StreamIdFinder:
    """Feed SSE chunks as they pass; ``found`` holds the response id once seen."""

    def __init__(self) -> None:
        self.found = ""
        self._buffer = b""
        self._done = False

    def feed(self, chunk: bytes) -> None:
        if self._done:
            return
        self._buffer += chunk
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            for line in event.splitlines():
                if line.startswith(b"data:") and self._take(line[5:].strip()):
                    return
        if len(self._buffer) > _SNIFF_LIMIT:
            self._stop()

    def _take(self, data: bytes) -> bool:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(payload, dict) or payload.get("type") != "response.created":
            return False
        self.found = _id_in(payload.get("response"))
        self._stop()
        return True

    def _stop(self) -> None:
        self._done, self._buffer = True, b""
