"""Reading one field of a ``multipart/form-data`` body without decoding the upload.

The router forwards the body unchanged; all it needs is the ``model`` field. The parts are
walked by their boundaries in the bytes already received (``bytes.find`` over the body,
no copy of the file parts), stopping at the wanted field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from llm_router.errors import InvalidRequest

_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)
_NAME = re.compile(rb'(?:^|;)\s*name="([^"]*)"|(?:^|;)\s*name=([^;\s]+)', re.IGNORECASE)
_FILENAME = re.compile(rb'filename="([^"]*)"', re.IGNORECASE)
#: A part's headers longer than this are not a form a client library would send.
_MAX_PART_HEADERS = 16 * 1024


def boundary_of(content_type: str) -> bytes:
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise InvalidRequest("multipart/form-data body without a boundary in its Content-Type")
    return found.group(1).encode("latin-1")


def _field_name(headers: bytes) -> bytes | None:
    for line in headers.split(b"\r\n"):
        label, _, value = line.partition(b":")
        if label.strip().lower() == b"content-disposition":
            found = _NAME.search(value)
            if found is not None:
                return found.group(1) if found.group(1) is not None else found.group(2)
    return None


def _parts(body: bytes, content_type: str) -> Iterator[tuple[bytes, int, int]]:
    """Each part's headers and the (start, end) of its content in ``body``."""
    delimiter = b"--" + boundary_of(content_type)
    at = body.find(delimiter)
    if at == -1:
        raise InvalidRequest("malformed multipart/form-data body: no boundary found")
    while True:
        start = at + len(delimiter)
        if body.startswith(b"--", start):
            return  # the closing delimiter
        headers_end = body.find(b"\r\n\r\n", start, start + _MAX_PART_HEADERS)
        if headers_end == -1:
            raise InvalidRequest("malformed multipart/form-data body: a part has no headers end")
        following = body.find(b"\r\n" + delimiter, headers_end + 4)
        if following == -1:
            raise InvalidRequest("malformed multipart/form-data body: no closing boundary")
        yield body[start:headers_end], headers_end + 4, following
        at = following + 2


def form_field(body: bytes, content_type: str, name: str) -> str | None:
    """The text value of field ``name``, or None when the form has no such field. Stops
    at that field: the parts after it (usually the upload) are never looked at."""
    wanted = name.encode()
    for headers, start, end in _parts(body, content_type):
        if _field_name(headers) == wanted:
            try:
                return body[start:end].decode()
            except UnicodeDecodeError as exc:
                raise InvalidRequest(f"'{name}' is not valid UTF-8", param=name) from exc
    return None


def form_parts(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Every field: name → (file name or None, content). For the simulated runtime, which
    plays the server that does read the upload."""
    parts: dict[str, tuple[str | None, bytes]] = {}
    for headers, start, end in _parts(body, content_type):
        name = _field_name(headers)
        if name is not None:
            found = _FILENAME.search(headers)
            filename = found.group(1).decode("latin-1") if found else None
            parts[name.decode("latin-1")] = (filename, body[start:end])
    return parts
