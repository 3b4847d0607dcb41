"""Bad requests through a real router process: a clear 400 in the OpenAI error shape,
naming the field, on every proxied endpoint, and never a traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from integration.conftest import open_cluster
from integration.probes import error_of
from integration.procs import Router

pytestmark = pytest.mark.redis

ENDPOINTS = ["/chat/completions", "/completions", "/embeddings"]


@pytest.fixture(scope="module")
def router(redis_url: str) -> Iterator[Router]:
    with open_cluster(redis_url) as cluster:
        (started,) = cluster.up()
        yield started


def send(router: Router, endpoint: str, content: bytes) -> httpx.Response:
    return httpx.post(
        f"{router.api_base}{endpoint}",
        content=content,
        headers={"content-type": "application/json"},
        timeout=10,
    )


def assert_clean_400(response: httpx.Response, param: str | None) -> dict[str, object]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    return error


BODIES_WITHOUT_A_FIELD = {
    "malformed JSON": b'{"model": "m", "messages": [',
    "not JSON at all": b"model=m",
    "empty body": b"",
    "a JSON array": b'[{"model": "m"}]',
    "a JSON string": b'"m"',
    "invalid UTF-8": b'{"model": "\xff\xfe"}',
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", sorted(BODIES_WITHOUT_A_FIELD))
def test_body_that_is_not_a_json_object(router: Router, endpoint: str, case: str) -> None:
    response = send(router, endpoint, BODIES_WITHOUT_A_FIELD[case])
    assert response.status_code == 400, response.text
    assert "Traceback" not in response.text
    assert error_of(response)["type"] == "invalid_request_error"


BAD_MODELS = {
    "missing": {"messages": []},
    "null": {"model": None},
    "a number": {"model": 42},
    "a list": {"model": ["a", "b"]},
    "an object": {"model": {"id": "m"}},
    "a boolean": {"model": True},
    "empty": {"model": ""},
    "10 KB long": {"model": "m" * 10_240},
    "with a NUL": {"model": "llama\u0000evil"},
    "with a newline": {"model": "llama\nX-Injected: 1"},
    "with an escape": {"model": "llama\u001b[31m"},
    "with DEL": {"model": "llama\u007f"},
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_field_names_model(router: Router, endpoint: str, case: str) -> None:
    response = send(router, endpoint, json.dumps(BAD_MODELS[case]).encode())
    error = assert_clean_400(response, "model")
    if case == "10 KB long":
        # The message says what is wrong, without echoing 10 KB back.
        assert len(str(error["message"])) < 1_000


def test_sdk_sees_bad_request_error(router: Router) -> None:
    client = openai.OpenAI(base_url=router.api_base, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="x" * 10_240, messages=[])
    assert caught.value.param == "model"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="bad\u0007id", input="hi")
    assert caught.value.param == "model"


def test_unknown_but_valid_model_is_404_not_400(router: Router) -> None:
    # Guards the other side: ids with '/', ':' and unicode are valid, merely unknown here.
    for model in ("org/model:Q4_K_M", "modèle-é", "a" * 200):
        response = send(router, "/chat/completions", json.dumps({"model": model}).encode())
        assert response.status_code == 404, response.text
        assert error_of(response)["code"] == "model_not_found"
