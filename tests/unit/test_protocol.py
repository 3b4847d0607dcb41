"""Wire models of the node protocol: what is accepted, what is rejected and where."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from llm_router.protocol import (
    MAX_MODEL_ID_LEN,
    MAX_MODELS_PER_NODE,
    HeartbeatRequest,
    ReadyModels,
    RegisterRequest,
    validate_model_id,
)

BASE: dict[str, Any] = {"machine_name": "box", "ip_address": "10.0.0.5", "runtime_port": 8000}


def _register_error(**body: Any) -> list[Any]:
    with pytest.raises(ValidationError) as info:
        RegisterRequest.model_validate({**BASE, **body})
    return info.value.errors()


def _heartbeat_error(**body: Any) -> list[Any]:
    with pytest.raises(ValidationError) as info:
        HeartbeatRequest.model_validate({"node_id": "n1", **body})
    return info.value.errors()


def _locs(errors: list[Any]) -> set[tuple[Any, ...]]:
    return {tuple(e["loc"]) for e in errors}


# --- register --------------------------------------------------------------------------------


def test_minimal_registration() -> None:
    request = RegisterRequest.model_validate(BASE)
    assert request.machine_name == "box"
    assert str(request.ip_address) == "10.0.0.5"
    assert request.api_port == 8001
    assert request.executable_models is None
    assert request.models is None
    assert request.gpu_devices == []


def test_full_registration() -> None:
    request = RegisterRequest.model_validate(
        {
            **BASE,
            "ip_address": "fd00::5",
            "runtime_version": "llama.cpp b3000",
            "node_api_port": 9100,
            "gpu_available": True,
            "gpu_devices": [{"model": "NVIDIA H100", "count": 8, "memory": 81920}],
            "gpu_count": 8,
            "gpu_backend": "cuda",
            "executable_models": ["llama3:8b", "org/model.gguf"],
            "models": ["llama3:8b", "org/model.gguf", "x-mlx"],
            "max_concurrency": 16,
            "some_future_field": {"ignored": True},
        }
    )
    assert request.api_port == 9100
    assert request.gpu_devices[0].count == 8
    assert request.executable_models == ["llama3:8b", "org/model.gguf"]
    assert request.device_names() == ["NVIDIA H100"]


def test_api_port_at_the_top_of_the_range() -> None:
    assert RegisterRequest.model_validate({**BASE, "runtime_port": 65535}).api_port == 65535


@pytest.mark.parametrize("field", ["executable_models", "models"])
def test_huge_model_id_is_rejected(field: str) -> None:
    errors = _register_error(**{field: ["ok-model", "m" * 10_240]})
    assert _locs(errors) == {(field, 1)}
    assert str(MAX_MODEL_ID_LEN) in errors[0]["msg"]


def test_model_id_at_the_limit_is_accepted() -> None:
    request = RegisterRequest.model_validate(
        {**BASE, "executable_models": ["m" * MAX_MODEL_ID_LEN]}
    )
    assert request.executable_models == ["m" * MAX_MODEL_ID_LEN]


@pytest.mark.parametrize("bad", ["line\nbreak", "nul\x00", "esc\x1b[31m", "tab\t", "del\x7f"])
def test_control_characters_in_model_ids_are_rejected(bad: str) -> None:
    errors = _register_error(executable_models=[bad])
    assert _locs(errors) == {("executable_models", 0)}
    assert "control characters" in errors[0]["msg"]


def test_empty_model_id_is_rejected() -> None:
    assert _locs(_register_error(models=[""])) == {("models", 0)}


def test_too_many_models_are_rejected() -> None:
    errors = _register_error(models=[f"m{i}" for i in range(MAX_MODELS_PER_NODE + 1)])
    assert _locs(errors) == {("models",)}


@pytest.mark.parametrize("name", ["\x1b[2Jevil", "box\r\n", "", "x" * 256])
def test_bad_machine_names_are_rejected(name: str) -> None:
    assert _locs(_register_error(machine_name=name)) == {("machine_name",)}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("runtime_port", "eighty"),
        ("runtime_port", 0),
        ("runtime_port", 70000),
        ("node_api_port", -1),
        ("ip_address", "not-an-ip"),
        ("executable_models", "llama"),
        ("executable_models", [1, 2]),
        ("models", {"a": 1}),
        ("max_concurrency", 0),
        ("max_concurrency", "many"),
        ("gpu_devices", "NVIDIA"),
        ("gpu_available", "perhaps"),
        ("gpu_capability_score", 20000),
        ("machine_name", 42),
    ],
)
def test_wrong_types_and_ranges_name_the_field(field: str, value: Any) -> None:
    errors = _register_error(**{field: value})
    assert {loc[0] for loc in _locs(errors)} == {field}


@pytest.mark.parametrize("missing", ["machine_name", "ip_address", "runtime_port"])
def test_required_fields(missing: str) -> None:
    body = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ValidationError) as info:
        RegisterRequest.model_validate(body)
    assert _locs(info.value.errors()) == {(missing,)}


def test_gpu_device_count_zero_is_not_a_device() -> None:
    request = RegisterRequest.model_validate(
        {**BASE, "gpu_devices": [{"model": "A100", "count": 0}], "gpu_model": "Tesla T4"}
    )
    assert request.device_names() == ["Tesla T4"]


def test_gpu_device_bad_model_names_the_nested_field() -> None:
    errors = _register_error(gpu_devices=[{"model": "ok\x00", "count": 1}])
    assert _locs(errors) == {("gpu_devices", 0, "model")}


# --- heartbeat ---------------------------------------------------------------------------------


def test_minimal_heartbeat() -> None:
    beat = HeartbeatRequest.model_validate({"node_id": "n1"})
    assert beat.executable_models is None
    assert beat.models is None
    assert beat.gpu_backend is None
    assert beat.metrics() == {"cpu_usage": 0.0, "memory_usage": 0.0, "active_requests": 0}


def test_absent_and_empty_lists_differ() -> None:
    assert HeartbeatRequest.model_validate({"node_id": "n1"}).executable_models is None
    empty = HeartbeatRequest.model_validate({"node_id": "n1", "executable_models": []})
    assert empty.executable_models == []


@pytest.mark.parametrize("pair", [[3, 5], (3, 5)])
def test_ready_models_pair(pair: Any) -> None:
    beat = HeartbeatRequest.model_validate({"node_id": "n1", "ready_models": pair})
    assert beat.ready_models == ReadyModels(ready=3, total=5)
    assert beat.metrics()["ready_models"] == [3, 5]


def test_ready_models_object() -> None:
    beat = HeartbeatRequest.model_validate(
        {"node_id": "n1", "ready_models": {"ready": 1, "total": 2}}
    )
    assert beat.ready_models == ReadyModels(ready=1, total=2)


def test_ready_models_from_json_pair() -> None:
    beat = HeartbeatRequest.model_validate_json('{"node_id": "n1", "ready_models": [0, 4]}')
    assert beat.ready_models == ReadyModels(ready=0, total=4)


@pytest.mark.parametrize("bad", [[1, 2, 3], [-1, 2], ["a", "b"], "2/3", [1]])
def test_bad_ready_models_are_rejected(bad: Any) -> None:
    errors = _heartbeat_error(ready_models=bad)
    assert {loc[0] for loc in _locs(errors)} == {"ready_models"}


def test_metrics_carry_only_reported_values() -> None:
    beat = HeartbeatRequest.model_validate(
        {
            "node_id": "n1",
            "cpu_usage": 12.5,
            "gpu_usage": 80,
            "gpu_capability_score": 9000,
            "average_response_time_ms": 321.0,
            "loaded_models": ["a"],
            "executable_models": ["a"],
        }
    )
    metrics = beat.metrics()
    assert metrics["cpu_usage"] == 12.5
    assert metrics["gpu_usage"] == 80
    assert metrics["gpu_capability_score"] == 9000
    assert metrics["average_response_time_ms"] == 321.0
    assert "gpu_temperature" not in metrics
    # Lists are not metrics: the registry stores them on their own terms.
    assert "executable_models" not in metrics and "loaded_models" not in metrics


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("node_id", ""),
        ("node_id", "n" * 65),
        ("cpu_usage", 101),
        ("memory_usage", -1),
        ("cpu_usage", "busy"),
        ("active_requests", -3),
        ("gpu_capability_score", 10001),
        ("executable_models", ["m" * 10_240]),
        ("loaded_models", ["bad\nid"]),
        ("models", "one-model"),
        ("initializing", "maybe"),
        ("max_concurrency", 0),
    ],
)
def test_bad_heartbeat_fields_are_named(field: str, value: Any) -> None:
    errors = _heartbeat_error(**{field: value})
    assert {loc[0] for loc in _locs(errors)} == {field}


def test_heartbeat_needs_a_node_id() -> None:
    with pytest.raises(ValidationError) as info:
        HeartbeatRequest.model_validate({"cpu_usage": 1})
    assert _locs(info.value.errors()) == {("node_id",)}


# --- the shared model id rule ------------------------------------------------------------------


def test_validate_model_id() -> None:
    assert validate_model_id("meta-llama/Llama-3.1-8B-Instruct:Q4") == (
        "meta-llama/Llama-3.1-8B-Instruct:Q4"
    )
    for bad in ("", "x" * (MAX_MODEL_ID_LEN + 1), "a\nb"):
        with pytest.raises(ValueError):
            validate_model_id(bad)
