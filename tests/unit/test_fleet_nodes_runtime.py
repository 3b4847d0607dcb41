"""``llm-router fleet nodes`` shows what the runtime behind each node says."""

from __future__ import annotations

import io

from rich.console import Console

from llm_router.fleetctl import _nodes_table, _runtime_text


def test_runtime_text() -> None:
    node = {
        "runtime_status": "ready",
        "runtime_kind": "vllm",
        "runtime_version": "0.11.0",
        "runtime_load": {"running": 3, "waiting": 1, "kv_cache_usage": 0.42},
    }
    assert _runtime_text(node) == "ready vllm 0.11.0, 3 running 1 waiting kv 42%"
    assert _runtime_text({}) == "-"
    assert _runtime_text({"runtime_status": "unauthorized"}) == "unauthorized"


def test_nodes_table_marks_loaded_models_and_capacity_source() -> None:
    row = {
        "id": "n1",
        "machine_name": "box",
        "ip_address": "10.0.0.1",
        "node_api_port": 8101,
        "gpu_backend": "cuda",
        "status": "online",
        "in_flight": 1,
        "max_concurrency": 2,
        "max_concurrency_source": "runtime",
        "last_seen": 100.0,
        "executable_models": ["a", "b"],
        "loaded_models": ["a"],
        "excluded_models": {},
        "runtime_status": "ready",
        "runtime_kind": "llamacpp",
    }
    out = io.StringIO()
    Console(file=out, width=300).print(_nodes_table([row], 101.0))
    text = out.getvalue()
    assert "a (loaded), b" in text
    assert "1/2 (runtime)" in text
    assert "ready llamacpp" in text
