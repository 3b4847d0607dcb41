"""Router settings: read from LLM_ROUTER_* variables, validated with messages that say why."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from llm_router.settings import RouterSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LLM_ROUTER_* from the surrounding shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("LLM_ROUTER_"):
            monkeypatch.delenv(name)


def _error_text(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return "\n".join(f"{e['loc']}: {e['msg']}" for e in exc.value.errors())


def test_defaults() -> None:
    settings = RouterSettings()
    assert settings.redis_url is None
    assert settings.embedded is True
    assert settings.key_prefix == "llmr"
    assert settings.heartbeat_interval_s == 5.0
    assert settings.node_timeout_s == 10.0
    assert settings.default_max_concurrency == 4
    assert settings.api_keys == [] and settings.node_keys == [] and settings.admin_keys == []
    assert settings.auth_disabled is False


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ROUTER_REDIS_URL", "redis://127.0.0.1:6390/2")
    monkeypatch.setenv("LLM_ROUTER_KEY_PREFIX", "fleet-a")
    monkeypatch.setenv("LLM_ROUTER_PORT", "9090")
    monkeypatch.setenv("LLM_ROUTER_HEARTBEAT_INTERVAL_S", "2")
    monkeypatch.setenv("LLM_ROUTER_NODE_TIMEOUT_S", "7.5")
    monkeypatch.setenv("LLM_ROUTER_QUEUE_MAX", "12")
    monkeypatch.setenv("LLM_ROUTER_QUEUE_TIMEOUT_S", "3")
    monkeypatch.setenv("LLM_ROUTER_LEASE_TTL_S", "20")
    monkeypatch.setenv("LLM_ROUTER_EXCLUSION_COOLDOWN_S", "0")
    monkeypatch.setenv("LLM_ROUTER_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("LLM_ROUTER_DEFAULT_MAX_CONCURRENCY", "8")
    monkeypatch.setenv("LLM_ROUTER_REQUIRE_GPU", "true")
    monkeypatch.setenv("LLM_ROUTER_AUTH_DISABLED", "1")
    settings = RouterSettings()
    assert settings.redis_url == "redis://127.0.0.1:6390/2"
    assert settings.embedded is False
    assert settings.key_prefix == "fleet-a"
    assert settings.port == 9090
    assert settings.heartbeat_interval_s == 2.0
    assert settings.node_timeout_s == 7.5
    assert settings.queue_max == 12
    assert settings.queue_timeout_s == 3.0
    assert settings.lease_ttl_s == 20.0
    assert settings.exclusion_cooldown_s == 0.0
    assert settings.max_attempts == 5
    assert settings.default_max_concurrency == 8
    assert settings.require_gpu is True
    assert settings.auth_disabled is True


def test_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ROUTER_API_KEYS", "sk-one, sk-two,,  sk-three ")
    monkeypatch.setenv("LLM_ROUTER_NODE_KEYS", "nk-only")
    monkeypatch.setenv("LLM_ROUTER_ADMIN_KEYS", "")
    settings = RouterSettings()
    assert settings.api_keys == ["sk-one", "sk-two", "sk-three"]
    assert settings.node_keys == ["nk-only"]
    assert settings.admin_keys == []


def test_keys_as_a_list_in_code() -> None:
    assert RouterSettings(api_keys=["a", "b"]).api_keys == ["a", "b"]
    assert RouterSettings(api_keys="a,b").api_keys == ["a", "b"]


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ROUTER_PORT", "9090")
    assert RouterSettings(port=9191).port == 9191


@pytest.mark.parametrize(("timeout", "interval"), [(5, 5), (4, 5), (1, 30)])
def test_node_timeout_must_exceed_heartbeat_interval(timeout: float, interval: float) -> None:
    with pytest.raises(ValidationError) as info:
        RouterSettings(node_timeout_s=timeout, heartbeat_interval_s=interval)
    text = _error_text(info)
    assert "node_timeout_s" in text and "heartbeat_interval_s" in text
    assert "greater than" in text


def test_node_timeout_from_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ROUTER_NODE_TIMEOUT_S", "3")
    with pytest.raises(ValidationError) as info:
        RouterSettings()
    assert "heartbeat_interval_s" in _error_text(info)


@pytest.mark.parametrize(
    "prefix", ["", "has space", "{llmr}", "a:b", "x" * 65, "tag}", "naïve", "new\nline"]
)
def test_bad_key_prefix_is_rejected(prefix: str) -> None:
    with pytest.raises(ValidationError) as info:
        RouterSettings(key_prefix=prefix)
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [("key_prefix",)]
    assert "A-Za-z0-9_.-" in errors[0]["msg"]


@pytest.mark.parametrize("prefix", ["llmr", "fleet-a", "prod_eu.1", "x" * 64])
def test_good_key_prefixes(prefix: str) -> None:
    assert RouterSettings(key_prefix=prefix).key_prefix == prefix


def test_bad_key_prefix_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ROUTER_KEY_PREFIX", "{bad}")
    with pytest.raises(ValidationError) as info:
        RouterSettings()
    assert "key_prefix" in _error_text(info)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 0),
        ("port", 70000),
        ("queue_max", -1),
        ("max_attempts", 0),
        ("default_max_concurrency", 0),
        ("lease_ttl_s", 0),
        ("heartbeat_interval_s", -1),
        ("log_level", "chatty"),
    ],
)
def test_out_of_range_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        RouterSettings(**{field: value})  # type: ignore[arg-type]
    assert {e["loc"][0] for e in info.value.errors()} == {field}


def test_non_numeric_environment_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ROUTER_QUEUE_MAX", "lots")
    with pytest.raises(ValidationError) as info:
        RouterSettings()
    assert {e["loc"][0] for e in info.value.errors()} == {"queue_max"}


def test_log_level_is_normalised() -> None:
    assert RouterSettings(log_level="DEBUG").log_level == "debug"
