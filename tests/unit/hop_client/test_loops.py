"""The folder's tests really run on the loop their id names."""

from __future__ import annotations

import asyncio

import pytest
import uvloop


async def test_each_test_runs_on_the_loop_its_id_names(request: pytest.FixtureRequest) -> None:
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert on_uvloop == request.node.name.endswith("[uvloop]"), request.node.name
