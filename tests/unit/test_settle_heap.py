"""A started replica hides its long-lived heap from the cyclic collector."""

from __future__ import annotations

import gc
import weakref

from litestar.testing import AsyncTestClient

from llm_router.app import YOUNG_COLLECTION_THRESHOLD, create_app
from llm_router.settings import RouterSettings
from llm_router.state.connect import open_store


class _Node:
    other: _Node


async def test_starting_the_app_freezes_what_exists_then_but_no_garbage() -> None:
    app = create_app(RouterSettings(auth_disabled=True), store=open_store(None))
    gc.unfreeze()  # whatever an earlier test froze counts as not frozen here
    threshold = gc.get_threshold()
    gc.set_threshold(700, *threshold[1:])
    gc.disable()  # only the app's own collection may free the cycle below
    try:
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        cycle = weakref.ref(a)
        del a, b
        assert cycle() is not None
        async with AsyncTestClient(app) as client:
            assert gc.get_freeze_count() > 0
            assert cycle() is None, "garbage alive at start-up was frozen"
            assert gc.get_threshold()[0] >= YOUNG_COLLECTION_THRESHOLD
            assert (await client.get("/healthz")).status_code == 200
    finally:
        gc.enable()
        gc.set_threshold(*threshold)
