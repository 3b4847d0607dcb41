"""The endpoints beyond chat against real llama.cpp ``llama-server`` processes, behind real
node agents and a router on Redis, driven with the official ``anthropic`` and ``openai`` SDKs.

One fleet for the module (servers on the same tiny model share its id):

    plain   SHARED, no --embeddings: llama.cpp answers 501 to /v1/embeddings
    embed   SHARED, --embeddings --pooling mean
    solo    SOLO, no --embeddings: the only node of its model
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis

from llm_router.state.keys import Keys

from .conftest import TinyModel, open_llama_servers, open_runtime_fleet
from .llama import RuntimeFleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SHARED = "tiny-ep-shared"
SOLO = "tiny-ep-solo"
#: Random weights could pick end-of-text first; llama.cpp's ignore_eos makes every token.
NO_EOS = {"ignore_eos": True}
HI = [{"role": "user", "content": "hi"}]


@dataclass
class Fleet:
    runtime: RuntimeFleet
    names: dict[str, str]  # node id → machine name

    @property
    def url(self) -> str:
        return self.runtime.routers[0].url

    def node_of(self, headers: Mapping[str, str]) -> str:
        return self.names[headers["x-llm-router-node"]]

    def record(self, name: str) -> dict[str, Any]:
        return next(r for r in self.runtime.nodes_view() if r["machine_name"] == name)

    def declined(self, name: str) -> list[str]:
        """The endpoint families the router remembers ``name`` declining (Redis)."""
        node_id = next(i for i, n in self.names.items() if n == name)
        with redis.Redis.from_url(self.runtime.redis_url, decode_responses=True) as db:
            families: list[str] = db.zrange(
                Keys(self.runtime.key_prefix).unsupported(node_id), 0, -1
            )
        return families

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def fleet(llama_server_binary: Path, redis_url: str, tiny_model: TinyModel) -> Iterator[Fleet]:
    with open_llama_servers(llama_server_binary) as start, open_runtime_fleet(redis_url) as runtime:
        shared, solo = tiny_model(SHARED), tiny_model(SOLO)
        servers = {
            "plain": start(shared),
            "embed": start(shared, "--embeddings", "--pooling", "mean"),
            "solo": start(solo),
        }
        runtime.up()
        nodes = [runtime.start_agent(s, machine_name=name) for name, s in servers.items()]
        for node in nodes:
            runtime.wait_record(node, runtime_status="ready", status="online")
        yield Fleet(runtime, {v: k for k, v in runtime.node_ids().items()})


# -- /v1/messages (Anthropic) -------------------------------------------------------------


def test_messages_plain_streamed_and_count_tokens(fleet: Fleet) -> None:
    client = fleet.anthropic()
    raw = client.messages.with_raw_response.create(
        model=SOLO, max_tokens=4, messages=HI, extra_body=NO_EOS
    )
    assert fleet.node_of(raw.headers) == "solo"
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.output_tokens == 4

    with client.messages.stream(model=SOLO, max_tokens=4, messages=HI, extra_body=NO_EOS) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "max_tokens"

    counted = client.messages.count_tokens(
        model=SOLO, messages=[{"role": "user", "content": "one two three four"}]
    )
    # The chat template wraps the words: more tokens than words, counted by the node.
    assert counted.input_tokens > 4


def test_messages_router_errors_are_in_the_anthropic_dialect(fleet: Fleet) -> None:
    client = fleet.anthropic()
    with pytest.raises(anthropic.NotFoundError) as not_found:
        client.messages.create(model="no/such-model", max_tokens=4, messages=HI)
    assert not_found.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model 'no/such-model' does not exist"},
    }
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="", max_tokens=4, messages=HI)
    assert isinstance(bad.value.body, dict) and bad.value.body["type"] == "error"
    assert bad.value.body["error"]["type"] == "invalid_request_error"


# -- /v1/responses (OpenAI) ---------------------------------------------------------------


def test_responses_plain_and_streamed(fleet: Fleet) -> None:
    client = fleet.openai()
    raw = client.responses.with_raw_response.create(
        model=SOLO, input="hi", max_output_tokens=4, extra_body=NO_EOS
    )
    assert fleet.node_of(raw.headers) == "solo"
    response = raw.parse()
    assert response.id and response.status == "completed"
    assert response.output_text
    assert response.usage is not None and response.usage.output_tokens == 4

    events = list(
        client.responses.create(
            model=SOLO, input="hi", max_output_tokens=4, stream=True, extra_body=NO_EOS
        )
    )
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds


def test_previous_response_id_gets_the_nodes_400_and_excludes_nothing(fleet: Fleet) -> None:
    client = fleet.openai()
    first = client.responses.create(model=SOLO, input="hi", max_output_tokens=2, extra_body=NO_EOS)
    # llama.cpp keeps no responses: the id is remembered, the node it names says no.
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model=SOLO, input="again", max_output_tokens=2, previous_response_id=first.id
        )
    assert fleet.node_of(refused.value.response.headers) == "solo"
    assert "previous_response_id" in refused.value.message
    record = fleet.record("solo")
    assert record["excluded_models"] == {} and record["executable_models"] == [SOLO]
    assert "responses" not in fleet.declined("solo")
    assert client.responses.create(model=SOLO, input="hi", max_output_tokens=2).id


# -- "this node does not do that": llama.cpp without --embeddings -------------------------


def test_embeddings_go_to_the_capable_node_and_the_other_keeps_chat(fleet: Fleet) -> None:
    client = fleet.openai()
    # Inputs vary so that no affinity keeps them on one node; once "plain" has been asked
    # (and declined), it is not asked again.
    for n in range(12):
        raw = client.embeddings.with_raw_response.create(model=SHARED, input=[f"one {n}", "two"])
        assert fleet.node_of(raw.headers) == "embed"
        assert len(raw.parse().data) == 2
        if fleet.declined("plain"):
            break
    assert fleet.declined("plain") == ["embeddings"]
    assert fleet.declined("embed") == []
    served = Counter()
    for _ in range(8):
        chat = client.chat.completions.with_raw_response.create(
            model=SHARED, messages=HI, max_tokens=2
        )
        served[fleet.node_of(chat.headers)] += 1
    assert served["plain"] >= 1, served
    for name in ("plain", "embed"):
        record = fleet.record(name)
        assert record["excluded_models"] == {} and record["executable_models"] == [SHARED]


def test_embeddings_on_the_only_node_without_them(fleet: Fleet) -> None:
    body = {"model": SOLO, "input": "x"}
    with httpx.Client(base_url=fleet.url, timeout=30) as http:
        first = http.post("/v1/embeddings", json=body)
        # No other candidate: llama.cpp's own answer passes through.
        assert first.status_code == 501, first.text
        assert fleet.node_of(first.headers) == "solo"
        assert "does not support embeddings" in first.json()["error"]["message"]
        again = http.post("/v1/embeddings", json=body)
    # Remembered: the router answers itself without asking the node again.
    assert again.status_code == 501, again.text
    assert again.json()["error"]["code"] == "endpoint_not_supported"
    assert fleet.declined("solo") == ["embeddings"]
    record = fleet.record("solo")
    assert record["excluded_models"] == {} and record["executable_models"] == [SOLO]
    client = fleet.openai()
    for _ in range(2):
        chat = client.chat.completions.with_raw_response.create(
            model=SOLO, messages=HI, max_tokens=2
        )
        assert fleet.node_of(chat.headers) == "solo"
        assert chat.parse().choices
