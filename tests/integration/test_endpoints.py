"""Every proxied endpoint through real processes: two router replicas (and a third with an
API key) on one redis-server, simulated nodes behind real node agents, the official
``openai`` and ``anthropic`` SDKs as clients.

The fleet (one per module):

    alpha, beta   MODEL (every endpoint)
    plain         CHAT_ONLY, SHARED: declines embeddings (501), as llama.cpp without
                  --embeddings does
    full          SHARED (every endpoint)
    flaky         FLAKY: dies in the middle of every stream
    nostore       NO_STORE: creates responses but answers 501 to retrieving one
    lonely        LONELY: killed by the vanished-node test (last in the file)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from integration.conftest import open_cluster
from integration.probes import SdkClients
from integration.procs import Cluster, Router

MODEL = "sim/every-endpoint"
CHAT_ONLY = "sim/chat-only"
SHARED = "sim/shared"
FLAKY = "sim/flaky"
NO_STORE = "sim/no-store"
LONELY = "sim/lonely"
API_KEY = "sk-endpoints-test"

pytestmark = pytest.mark.redis


class Fleet:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.r1, self.r2 = cluster.start_router(), cluster.start_router()
        self.keyed = cluster.start_router(api_keys=[API_KEY])
        cluster.start_node([MODEL], machine_name="alpha")
        cluster.start_node([MODEL], machine_name="beta", router=self.r2)
        cluster.start_node([CHAT_ONLY, SHARED], machine_name="plain", refuse_families="embeddings")
        cluster.start_node([SHARED], machine_name="full")
        cluster.start_node([FLAKY], machine_name="flaky", fail_mode="midstream")
        cluster.start_node(
            [NO_STORE], machine_name="nostore", refuse_families="GET /v1/responses/{response_id}"
        )
        self.lonely = cluster.start_node([LONELY], machine_name="lonely")
        self.ids = cluster.wait_all()
        self.names = {node_id: name for name, node_id in self.ids.items()}

    def node_of(self, headers: httpx.Headers | dict[str, str]) -> str:
        return self.names[headers["x-llm-router-node"]]


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with open_cluster(redis_url) as cluster:
        yield Fleet(cluster)


def anthropic_client(router: Router, api_key: str = "x") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=router.url, api_key=api_key, max_retries=0)


# -- Responses ----------------------------------------------------------------------------


async def test_responses_plain_and_previous_response_id_across_replicas(
    fleet: Fleet, sdk: SdkClients
) -> None:
    # Two nodes serve the model: without stickiness, half of the follow-ups would land on
    # the node that never saw the first response (and it would answer 404).
    for _ in range(6):
        first = await sdk(fleet.r1).responses.with_raw_response.create(model=MODEL, input="hi")
        created = first.parse()
        assert created.output_text.startswith("Hello from ")
        follow = await sdk(fleet.r2).responses.with_raw_response.create(
            model=MODEL, input="and then?", previous_response_id=created.id
        )
        assert fleet.node_of(follow.headers) == fleet.node_of(first.headers)
        assert f"Continuing {created.id}." in follow.parse().output_text


async def test_streamed_response_id_is_followed_by_get_and_delete(
    fleet: Fleet, sdk: SdkClients
) -> None:
    stream = await sdk(fleet.r1).responses.create(model=MODEL, input="stream it", stream=True)
    kinds, text, created_id = [], "", ""
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.created":
            created_id = event.response.id
        if event.type == "response.output_text.delta":
            text += event.delta
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert created_id and text.startswith("Hello from ")

    for _ in range(4):  # by id, on the other replica, always the node that made it
        got = await sdk(fleet.r2).responses.with_raw_response.retrieve(created_id)
        assert got.parse().id == created_id
    async with httpx.AsyncClient(base_url=fleet.r2.url) as http:
        cancelled = await http.post(f"/v1/responses/{created_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        deleted = await http.delete(f"/v1/responses/{created_id}")
        assert deleted.status_code == 200, deleted.text
        gone = await http.get(f"/v1/responses/{created_id}")
    # The node's own 404 (it was deleted there), not another node's.
    assert gone.status_code == 404
    assert created_id in gone.json()["error"]["message"]


async def test_unknown_response_id_is_a_404_naming_it(fleet: Fleet, sdk: SdkClients) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk(fleet.r1).responses.retrieve("resp_never_made")
    assert caught.value.code == "response_not_found"
    assert "resp_never_made" in caught.value.message
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk(fleet.r2).responses.create(
            model=MODEL, input="x", previous_response_id="resp_never_made"
        )
    assert "resp_never_made" in caught.value.message


async def test_response_input_tokens(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.r1.url) as http:
        answer = await http.post(
            "/v1/responses/input_tokens", json={"model": MODEL, "input": "one two three"}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["input_tokens"] == 3


# -- audio, rerank, score, speech, images -------------------------------------------------


async def test_audio_transcription_upload_is_forwarded_unchanged(
    fleet: Fleet, sdk: SdkClients
) -> None:
    audio = bytes(range(256)) * 8192  # 2 MiB, every byte value, under the body limit
    transcript = await sdk(fleet.r1).audio.transcriptions.create(
        model=MODEL, file=("speech.wav", audio, "audio/wav")
    )
    assert transcript.text.startswith(f"Transcribed {len(audio)} bytes of speech.wav on ")
    translated = await sdk(fleet.r2).audio.translations.create(
        model=MODEL, file=("talk.mp3", b"ID3" + audio[:1000])
    )
    assert translated.text.startswith("Translated 1003 bytes of talk.mp3 on ")


async def test_rerank_through_httpx(fleet: Fleet) -> None:
    body = {
        "model": MODEL,
        "query": "where is the router",
        "documents": ["the router is here", "nothing to see", {"text": "a router"}],
        "top_n": 2,
    }
    async with httpx.AsyncClient(base_url=fleet.r1.url) as http:
        for path in ("/v1/rerank", "/rerank"):
            answer = await http.post(path, json=body)
            assert answer.status_code == 200, answer.text
            results = answer.json()["results"]
            assert len(results) == 2 and results[0]["index"] == 0
            assert answer.headers["x-llm-router-node"] in fleet.names
        score = await http.post(
            "/v1/score", json={"model": MODEL, "text_1": "a b", "text_2": ["a b", "c"]}
        )
    assert score.status_code == 200, score.text
    assert [d["index"] for d in score.json()["data"]] == [0, 1]


async def test_speech_bytes_and_images(fleet: Fleet, sdk: SdkClients) -> None:
    speech = await sdk(fleet.r1).audio.speech.create(model=MODEL, voice="alloy", input="hello")
    audio = speech.read()
    assert audio.startswith(b"RIFF") and b"WAVE" in audio[:16]
    images = await sdk(fleet.r2).images.generate(model=MODEL, prompt="a router", n=2)
    assert images.data is not None and len(images.data) == 2
    assert images.data[0].b64_json


# -- Anthropic Messages -------------------------------------------------------------------


async def test_messages_plain_streamed_and_count_tokens(fleet: Fleet) -> None:
    client = anthropic_client(fleet.r1)
    try:
        raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
        # The SDK's anthropic-version header crossed the router and the node agent.
        sent = raw.http_request.headers["anthropic-version"]
        assert raw.headers["anthropic-version"] == sent
        message = await raw.parse()
        assert message.type == "message" and message.content[0].type == "text"
        assert message.content[0].text.startswith("Hello from ")

        async with client.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text.startswith("Hello from ") and final.stop_reason == "end_turn"

        counted = await client.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "one two three four"}]
        )
        assert counted.input_tokens == 4
    finally:
        await client.close()


async def test_messages_errors_are_in_the_anthropic_dialect(fleet: Fleet) -> None:
    client = anthropic_client(fleet.r1)
    keyed = anthropic_client(fleet.keyed, api_key=API_KEY)
    wrong = anthropic_client(fleet.keyed, api_key="sk-wrong")
    try:
        with pytest.raises(anthropic.NotFoundError) as not_found:
            await client.messages.create(
                model="no/such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
        assert not_found.value.body == {
            "type": "error",
            "error": {
                "type": "not_found_error",
                "message": "The model 'no/such-model' does not exist",
            },
        }
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(
                model="", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
        assert isinstance(bad.value.body, dict)
        assert bad.value.body["error"]["type"] == "invalid_request_error"
        # x-api-key authenticates as a Bearer would; a wrong one is a 401 in the dialect.
        ok = await keyed.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
        assert ok.content[0].type == "text"
        with pytest.raises(anthropic.AuthenticationError) as denied:
            await wrong.messages.create(
                model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
        assert isinstance(denied.value.body, dict)
        assert denied.value.body["type"] == "error"
        assert denied.value.body["error"]["type"] == "authentication_error"
    finally:
        for made in (client, keyed, wrong):
            await made.close()


async def test_messages_stream_failure_is_an_anthropic_error_event(fleet: Fleet) -> None:
    body = {
        "model": FLAKY,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with httpx.AsyncClient(base_url=fleet.r1.url, timeout=30) as http:
        answer = await http.post("/v1/messages", json=body)
    assert answer.status_code == 200
    assert answer.text.startswith("event: message_start")
    last = answer.text.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    assert '"type": "error"' in last and '"api_error"' in last


# -- "this node does not do that" ---------------------------------------------------------


async def test_declined_embeddings_do_not_take_the_node_out_of_chat(
    fleet: Fleet, sdk: SdkClients
) -> None:
    client = sdk(fleet.r1)
    async with httpx.AsyncClient(base_url=fleet.r1.url) as http:
        first = await http.post("/v1/embeddings", json={"model": CHAT_ONLY, "input": "x"})
        # No other candidate: the node's own answer passes through.
        assert first.status_code == 501, first.text
        assert "embeddings is not supported" in first.text
        again = await http.post("/v1/embeddings", json={"model": CHAT_ONLY, "input": "x"})
    # Remembered (in Redis, for every replica): the router no longer asks that node.
    assert again.status_code == 501
    assert again.json()["error"]["code"] == "endpoint_not_supported"
    for _ in range(3):
        chat = await client.chat.completions.with_raw_response.create(
            model=CHAT_ONLY, messages=[{"role": "user", "content": "hi"}]
        )
        assert fleet.node_of(chat.headers) == "plain"


async def test_declined_endpoint_fails_over_and_the_model_stays_on_both_nodes(
    fleet: Fleet, sdk: SdkClients
) -> None:
    client = sdk(fleet.r2)
    for _ in range(4):
        raw = await client.embeddings.with_raw_response.create(model=SHARED, input="x")
        assert fleet.node_of(raw.headers) == "full"

    async def chat() -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model=SHARED, messages=[{"role": "user", "content": "hi"}]
        )
        return fleet.node_of(raw.headers)

    served = Counter(await asyncio.gather(*(chat() for _ in range(12))))
    assert set(served) == {"plain", "full"}, served


async def test_a_stored_responses_node_declining_is_final_and_excludes_nothing(
    fleet: Fleet, sdk: SdkClients
) -> None:
    created = await sdk(fleet.r1).responses.create(model=NO_STORE, input="hi")
    async with httpx.AsyncClient(base_url=fleet.r2.url) as http:
        for _ in range(2):  # asked each time: no other node could answer for it
            got = await http.get(f"/v1/responses/{created.id}")
            assert got.status_code == 501, got.text
            assert fleet.node_of(got.headers) == "nostore"
    chat = await sdk(fleet.r1).chat.completions.with_raw_response.create(
        model=NO_STORE, messages=[{"role": "user", "content": "hi"}]
    )
    assert fleet.node_of(chat.headers) == "nostore"


# -- a vanished node (keep last: it kills a node) -----------------------------------------


async def test_response_on_a_vanished_node_is_a_404_naming_the_id(
    fleet: Fleet, sdk: SdkClients
) -> None:
    created = await sdk(fleet.r1).responses.create(model=LONELY, input="hi")
    fleet.lonely.proc.kill()
    fleet.cluster.wait_status(fleet.lonely, "offline", timeout_s=15)
    for router in (fleet.r1, fleet.r2):
        with pytest.raises(openai.NotFoundError) as caught:
            await sdk(router).responses.retrieve(created.id)
        assert caught.value.code == "response_not_found"
        assert created.id in caught.value.message
        with pytest.raises(openai.NotFoundError):
            await sdk(router).responses.create(
                model=LONELY, input="x", previous_response_id=created.id
            )
