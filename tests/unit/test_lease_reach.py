"""A lease's origin and node credential are built once per node address and secret, and
a node that moves or changes its secret is reached at its new address with its new one."""

from __future__ import annotations

from typing import Any

import pytest

from llm_router.routing import select
from llm_router.routing.select import Dispatcher, Limits
from llm_router.state.scripts import Granted

LIMITS = Limits(
    lease_ttl_ms=1000,
    queue_max=1,
    queue_timeout_s=1,
    ticket_ttl_ms=1000,
    forget_ms=1000,
    retry_after_s=1,
)


def _dispatcher() -> Dispatcher:
    return Dispatcher(scripts=None, events=None, limits=LIMITS)  # type: ignore[arg-type]


def _granted(**changes: Any) -> Granted:
    fields: dict[str, Any] = {
        "lease_id": "l1",
        "node_id": "n1",
        "ip_address": "10.0.0.7",
        "port": 8000,
        "in_flight": 1,
        "max_concurrency": 4,
        "secret": "s1",
    }
    fields.update(changes)
    return Granted(**fields)


def test_the_origin_and_credential_follow_the_nodes_address_and_secret() -> None:
    dispatcher = _dispatcher()
    first = dispatcher._hold(_granted(), queued_ms=None)
    again = dispatcher._hold(_granted(lease_id="l2"), queued_ms=None)
    assert first.url == again.url == "http://10.0.0.7:8000"
    assert dict(first.node_headers) == {"authorization": "Bearer s1"}
    assert again.node_headers is first.node_headers  # built once
    assert (first.lease_id, again.lease_id) == ("l1", "l2")

    rotated = dispatcher._hold(_granted(lease_id="l3", secret="s2"), queued_ms=None)
    assert dict(rotated.node_headers) == {"authorization": "Bearer s2"}
    moved = dispatcher._hold(
        _granted(lease_id="l4", ip_address="::1", port=9000, scheme="https"), queued_ms=None
    )
    assert moved.url == "https://[::1]:9000"
    no_secret = dispatcher._hold(_granted(lease_id="l5", secret=""), queued_ms=None)
    assert dict(no_secret.node_headers) == {}


def test_the_shared_credential_cannot_be_changed_through_a_lease() -> None:
    dispatcher = _dispatcher()
    lease = dispatcher._hold(_granted(), queued_ms=None)
    with pytest.raises(TypeError):
        lease.node_headers["authorization"] = "Bearer other"  # type: ignore[index]
    later = dispatcher._hold(_granted(lease_id="l2"), queued_ms=None)
    assert dict(later.node_headers) == {"authorization": "Bearer s1"}


def test_the_table_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(select, "_REACH_MAX", 3)
    dispatcher = _dispatcher()
    for port in range(10):
        lease = dispatcher._hold(_granted(lease_id=f"l{port}", port=port), queued_ms=None)
        assert lease.url == f"http://10.0.0.7:{port}"
    assert len(dispatcher._reach) <= 3
