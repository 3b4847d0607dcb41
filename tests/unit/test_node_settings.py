"""Node and sim-node settings: environment parsing and validation messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llm_router.gpu import GpuBackend
from llm_router.node.settings import FailMode, NodeSettings, SimNodeSettings


def test_node_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ROUTER_ROUTER_URL", "http://router:8080/")
    monkeypatch.setenv("LLM_ROUTER_RUNTIME_URL", "http://127.0.0.1:11434")
    monkeypatch.setenv("LLM_ROUTER_GPU_BACKEND", "rocm")
    monkeypatch.setenv("LLM_ROUTER_PORT", "9001")
    settings = NodeSettings()
    assert settings.router_url == "http://router:8080"
    assert settings.gpu_backend is GpuBackend.ROCM
    assert settings.runtime_port == 9000
    assert settings.registered_ip == "127.0.0.1"


def test_wildcard_host_advertises_loopback_unless_told() -> None:
    s = NodeSettings(router_url="http://r", runtime_url="http://rt", host="0.0.0.0")
    assert s.registered_ip == "127.0.0.1"
    s = NodeSettings(
        router_url="http://r", runtime_url="http://rt", host="0.0.0.0", advertise_ip="10.0.0.7"
    )
    assert s.registered_ip == "10.0.0.7"


def test_bad_values_name_the_field() -> None:
    with pytest.raises(ValidationError, match="gpu_backend"):
        NodeSettings(router_url="http://r", runtime_url="http://rt", gpu_backend="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="runtime_url"):
        NodeSettings(router_url="http://r", runtime_url="localhost:11434")


def test_sim_models_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ROUTER_MODELS", "a, b,,a")
    monkeypatch.setenv("LLM_ROUTER_FAIL_MODE", "midstream")
    settings = SimNodeSettings(router_url="http://r")
    assert settings.models == ["a", "b"]
    assert settings.fail_mode is FailMode.MIDSTREAM


def test_sim_needs_a_model() -> None:
    with pytest.raises(ValidationError, match="at least one model"):
        SimNodeSettings(router_url="http://r", models="")  # type: ignore[arg-type]


def test_every_field_has_a_description() -> None:
    for cls in (NodeSettings, SimNodeSettings):
        missing = [n for n, f in cls.model_fields.items() if not f.description]
        assert missing == [], f"{cls.__name__}: {missing}"
