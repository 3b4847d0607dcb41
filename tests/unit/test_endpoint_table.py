"""The endpoint table and what hangs off it: matching, form fields, "does not do that",
response ids in answers, and errors in each dialect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_router.api.form import form_field, form_parts
from llm_router.api.request_model import Target, body_target, target_of
from llm_router.errors import InvalidRequest, NotFound, ResponseNotFound, UnsupportedMediaType
from llm_router.routing.endpoints import (
    ENDPOINTS,
    Dialect,
    Endpoint,
    ModelFrom,
    dialect_of,
    markdown_table,
    match,
    serves,
)
from llm_router.routing.proxy import declines_endpoint, stream_error_event
from llm_router.routing.response_ids import StreamIdFinder, id_of_object

BOUNDARY = "----form7MA4YWxkTrZu0gW"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def endpoint(method: str, path: str) -> Endpoint:
    found = match(method, path)
    assert found is not None, (method, path)
    return found[0]


def test_every_brief_endpoint_has_a_row() -> None:
    paths = {(e.method, e.path) for e in ENDPOINTS}
    for path in (
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
        "/v1/responses/input_tokens", "/v1/audio/transcriptions", "/v1/audio/translations",
        "/v1/audio/speech", "/v1/images/generations", "/v1/messages",
        "/v1/messages/count_tokens", "/v1/rerank", "/rerank", "/v1/score",
    ):  # fmt: skip
        assert ("POST", path) in paths
    assert {"GET", "DELETE"} <= {m for m, p in paths if p == "/v1/responses/{response_id}"}
    assert ("POST", "/v1/responses/{response_id}/cancel") in paths


def test_match_finds_the_row_and_the_id() -> None:
    found = match("GET", "/v1/responses/resp_abc")
    assert found is not None and found[1] == "resp_abc"
    assert found[0].model_from is ModelFrom.RESPONSE_ID
    cancel = match("POST", "/v1/responses/resp_abc/cancel")
    assert cancel is not None and cancel[1] == "resp_abc"
    # A static path wins over the id pattern; unknown methods and paths match nothing.
    assert match("POST", "/v1/responses/input_tokens") == (
        endpoint("POST", "/v1/responses/input_tokens"),
        "",
    )
    assert match("PUT", "/v1/responses/resp_abc") is None
    assert match("POST", "/v1/nothing") is None
    assert serves("/v1/responses/resp_abc") and serves("/rerank")
    assert not serves("/v1/nothing") and not serves("/v1/responses/a/b")


def test_what_a_node_may_answer_with() -> None:
    chat, speech = endpoint("POST", "/v1/chat/completions"), endpoint("POST", "/v1/audio/speech")
    assert chat.may_answer(200, "application/json") and chat.may_answer(200, "text/event-stream")
    assert not chat.may_answer(200, "text/html")
    assert speech.may_answer(200, "audio/mpeg") and not chat.may_answer(200, "audio/mpeg")
    assert chat.may_answer(204, "application/octet-stream")  # nothing to look at
    assert chat.may_answer(404, "text/html")  # an error passes through as the node sent it


def test_dialect_follows_the_path_even_off_the_table() -> None:
    assert dialect_of("/v1/messages") is Dialect.ANTHROPIC
    assert dialect_of("/v1/messages/count_tokens") is Dialect.ANTHROPIC
    assert dialect_of("/v1/messages/batches") is Dialect.ANTHROPIC
    assert dialect_of("/v1/messagesx") is Dialect.OPENAI
    assert dialect_of("/v1/chat/completions") is Dialect.OPENAI


@pytest.mark.parametrize("model_first", [True, False])
def test_form_field_reads_model_without_touching_the_upload(model_first: bool) -> None:
    # The upload holds what looks like a boundary and a header block: only a real
    # delimiter (CRLF + "--" + boundary) ends a part.
    upload = b"\x00\xff--" + BOUNDARY.encode() + b'x\r\n\r\nname="model"' + bytes(range(256))
    parts = [("file", upload, "a.wav"), ("model", b"whisper/large-v3", None)]
    body = form(*(parts[::-1] if model_first else parts))
    assert form_field(body, CT, "model") == "whisper/large-v3"
    assert form_parts(body, CT)["file"] == ("a.wav", upload)


def test_form_field_quoted_boundary_and_missing_field() -> None:
    body = form(("language", b"en", None))
    assert form_field(body, f'multipart/form-data; boundary="{BOUNDARY}"', "model") is None


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"no parts at all", CT),
        (f"--{BOUNDARY}\r\nContent-Disposition: form-data".encode(), CT),
        (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm'.encode(), CT),
        (b"", "multipart/form-data"),
    ],
)
def test_malformed_forms_are_400s(body: bytes, content_type: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        form_field(body, content_type, "model")
    assert caught.value.status_code == 400


async def _no_response(_: str) -> str | None:
    return None


async def test_target_of_each_model_source() -> None:
    responses = endpoint("POST", "/v1/responses")
    chat = endpoint("POST", "/v1/chat/completions")
    audio = endpoint("POST", "/v1/audio/transcriptions")
    body = json.dumps({"model": "m", "previous_response_id": "resp_1"}).encode()
    assert await target_of(responses, body, "application/json", "", _no_response) == Target(
        "m", "resp_1"
    )
    # Only the Responses endpoint follows a previous response.
    assert await target_of(chat, body, "application/json", "", _no_response) == Target("m")
    upload = form(("model", b"w", None), ("file", b"RIFF", "a.wav"))
    assert await target_of(audio, upload, CT, "", _no_response) == Target("w")
    # The front path reads a body's target without awaiting: the same answers.
    assert body_target(responses, body, "application/json") == Target("m", "resp_1")
    assert body_target(chat, body, "application/json") == Target("m")
    assert body_target(audio, upload, CT) == Target("w")

    with pytest.raises(InvalidRequest) as caught:
        await target_of(
            responses, b'{"model": "m", "previous_response_id": 7}', "", "", _no_response
        )
    assert caught.value.param == "previous_response_id"
    with pytest.raises(InvalidRequest) as missing:
        await target_of(audio, form(("file", b"x", "a.wav")), CT, "", _no_response)
    assert missing.value.param == "model"
    with pytest.raises(UnsupportedMediaType):
        await target_of(audio, b"model=w", "application/x-www-form-urlencoded", "", _no_response)
    with pytest.raises(ResponseNotFound) as unknown:
        await target_of(endpoint("GET", "/v1/responses/x"), b"", "", "resp_9", _no_response)
    assert "resp_9" in unknown.value.message and isinstance(unknown.value, NotFound)


@pytest.mark.parametrize(
    ("status", "body", "declined"),
    [
        (501, b'{"error":{"message":"This server does not support embeddings."}}', True),
        (405, b"", True),
        # llama.cpp and FastAPI (vLLM) for an unknown path:
        (404, b'{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}', True),
        (404, b'{"detail":"Not Found"}', True),
        # ... and for a model they do not serve:
        (404, b'{"object":"error","message":"The model `x` does not exist.","code":404}', False),
        (404, b'{"error":{"code":"model_not_found","param":"model","message":"..."}}', False),
        (400, b'{"error":{"message":"bad"}}', False),
    ],
)
def test_does_not_do_that_is_told_apart_from_a_missing_model(
    status: int, body: bytes, declined: bool
) -> None:
    assert declines_endpoint(status, body) is declined


def test_response_id_in_plain_and_streamed_answers() -> None:
    assert id_of_object(b'{"id": "resp_1", "object": "response"}') == "resp_1"
    assert id_of_object(b"[1]") == "" and id_of_object(b"not json") == ""
    created = {"type": "response.created", "response": {"id": "resp_2"}}
    event = b"event: response.created\ndata: " + json.dumps(created).encode() + b"\n\n"
    finder = StreamIdFinder()
    for i in range(0, len(event), 7):  # split anywhere, even inside the JSON
        finder.feed(event[i : i + 7])
    assert finder.found == "resp_2"
    other = StreamIdFinder()
    other.feed(b'data: {"type": "response.in_progress"}\n\n' + b"data: x" * 20_000)
    other.feed(b"\n\n" + event)
    assert other.found == ""  # gave up after its byte budget: the rest costs nothing


def test_stream_errors_and_router_errors_in_each_dialect() -> None:
    anthropic = stream_error_event(Dialect.ANTHROPIC, "node died")
    assert anthropic.startswith(b"event: error\ndata: ")
    assert json.loads(anthropic.split(b"data: ", 1)[1]) == {
        "type": "error",
        "error": {"type": "api_error", "message": "node died"},
    }
    openai = stream_error_event(Dialect.OPENAI, "node died")
    assert json.loads(openai.removeprefix(b"data: "))["error"]["code"] == "upstream_error"
    error = ResponseNotFound("No response found with id 'r'")
    assert error.body("anthropic") == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "No response found with id 'r'"},
    }
    assert error.body()["error"]["code"] == "response_not_found"


def test_the_endpoints_page_shows_the_table() -> None:
    page = (Path(__file__).parents[2] / "docs" / "endpoints.md").read_text()
    assert markdown_table() in page, "docs/endpoints.md is out of date: paste markdown_table()"
