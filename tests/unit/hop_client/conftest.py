"""Every test in this folder runs on uvloop (what the router serves on) and on asyncio's
own loop (what it falls back to where uvloop is missing): the hop client drives transports
directly, and the two loops differ in how they buffer, pause and report errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
