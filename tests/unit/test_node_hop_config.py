"""The node hop's security settings and the agent's check of the router's secret."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from llm_router.node.node_auth import NodeCredential, needs_secret
from llm_router.node.settings import SimNodeSettings
from llm_router.serve import serve
from llm_router.settings import RouterSettings


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "headers": list(headers)}


def test_only_the_current_secret_in_one_bearer_header_is_admitted() -> None:
    credential = NodeCredential()
    assert not credential.admits(_scope((b"authorization", b"Bearer ")))  # nothing issued yet
    credential.set("ns_one")
    assert credential.admits(_scope((b"authorization", b"Bearer ns_one")))
    assert credential.admits(_scope((b"authorization", b"bearer ns_one")))
    assert not credential.admits(_scope())
    assert not credential.admits(_scope((b"authorization", b"Basic ns_one")))
    assert not credential.admits(_scope((b"authorization", b"Bearer ns_on")))
    two = ((b"authorization", b"Bearer ns_one"), (b"authorization", b"Bearer ns_one"))
    assert not credential.admits(_scope(*two))
    credential.set("ns_two")
    assert not credential.admits(_scope((b"authorization", b"Bearer ns_one")))


def test_every_path_but_the_probe_and_the_listing_needs_the_secret() -> None:
    assert not needs_secret("/healthz")
    assert not needs_secret("/v1/models")
    assert not needs_secret("/v1/models/some-model")
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/responses/r1", "/metrics", "/"):
        assert needs_secret(path), path


def _agent(**values: object) -> SimNodeSettings:
    return SimNodeSettings(router_url="http://r:8080", **values)  # type: ignore[arg-type]


def test_agent_tls_settings_are_checked_naming_the_setting(tmp_path: Path) -> None:
    cert = tmp_path / "node.pem"
    cert.write_text("x")
    with pytest.raises(ValidationError, match="tls_cert and tls_key"):
        _agent(tls_cert=cert)
    with pytest.raises(ValidationError, match="tls_client_ca needs tls_cert"):
        _agent(tls_client_ca=cert)
    with pytest.raises(ValidationError, match="router_ca_file: no such file"):
        _agent(router_ca_file=tmp_path / "missing.pem")
    assert _agent().scheme == "http"
    assert _agent(tls_cert=cert, tls_key=cert).scheme == "https"


def test_router_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValidationError, match="node_client_cert and node_client_key"):
        RouterSettings(node_client_cert="/etc/router.pem")


def test_serve_refuses_an_unusable_node_ca_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        assert serve(RouterSettings(node_ca_file=str(tmp_path / "missing.pem"))) == 2
    assert "refusing to start: node_ca_file" in caplog.text
