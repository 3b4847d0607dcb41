"""The neutral raw-ASGI helpers: the no-op lifespan every small app here answers with."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from llm_router.asgi_util import lifespan


async def test_lifespan_completes_start_up_then_shutdown_and_returns() -> None:
    inbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
    sent: list[str] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])

    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})
    await asyncio.wait_for(lifespan(inbox.get, send), timeout=5)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert inbox.empty()
