"""Control-plane reads from nodes, bounded: a node decides what it sends, not how much of
the router's memory or time that costs.

The body is streamed and abandoned past ``max_bytes``; the whole exchange (connect,
headers, every chunk) must fit in ``timeout_s``, so a node trickling a byte at a time
cannot hold a registration open. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson


class FetchFailed(Exception):
    """Why a bounded fetch gave nothing usable (the message names no secret)."""


async def get_json(client: httpx.AsyncClient, url: str, *, max_bytes: int, timeout_s: float) -> Any:
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("GET", url, follow_redirects=False) as response:
                if response.status_code != 200:
                    raise FetchFailed(f"answered {response.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchFailed(f"sent more than {max_bytes} bytes")
                    chunks.append(chunk)
    except TimeoutError as exc:
        raise FetchFailed(f"did not answer within {timeout_s:g}s") from exc
    except httpx.HTTPError as exc:
        raise FetchFailed(str(exc) or type(exc).__name__) from exc
    try:
        return orjson.loads(b"".join(chunks))  # orjson caps nesting: no RecursionError
    except orjson.JSONDecodeError as exc:
        raise FetchFailed(f"sent invalid JSON: {exc}") from exc
