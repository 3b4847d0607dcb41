"""The allow-list between a node's answer headers and the client."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from llm_router.routing.node_headers import NODE_REQUEST_ID, media_type, passed_headers


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize(
    ("content_type", "media"),
    [
        ("application/json", "application/json"),
        ("Application/JSON; charset=utf-8", "application/json"),
        (" text/event-stream ;charset=utf-8", "text/event-stream"),
        (None, ""),
    ],
)
def test_the_media_type_is_read_without_parameters(content_type: str | None, media: str) -> None:
    assert media_type(content_type) == media


def test_only_listed_headers_pass_first_occurrence_lower_cased() -> None:
    out = passed_headers(
        headers(
            ("Cache-Control", "no-store"),
            ("cache-control", "public"),
            ("X-RateLimit-Limit-Tokens", "1000"),
            ("Anthropic-Ratelimit-Requests-Remaining", "5"),
            ("Retry-After", "2"),
            ("Location", "/elsewhere"),
            ("Set-Cookie", "a=b"),
            ("Access-Control-Allow-Origin", "*"),
            ("Content-Length", "999"),
            ("Content-Type", "application/json"),
            ("Openai-Organization", "someone"),
        )
    )
    assert out == {
        "cache-control": "no-store",
        "x-ratelimit-limit-tokens": "1000",
        "anthropic-ratelimit-requests-remaining": "5",
        "retry-after": "2",
    }


def test_headers_named_in_connection_stay_behind() -> None:
    out = passed_headers(
        headers(
            ("Connection", "keep-alive, Cache-Control"),
            ("Connection", "x-request-id"),
            ("Cache-Control", "no-store"),
            ("X-Request-Id", "rid-1"),
            ("Retry-After", "1"),
        )
    )
    assert out == {"retry-after": "1"}


@pytest.mark.parametrize(
    ("given", "passed"),
    [
        ([("X-Request-ID", "run-1")], "run-1"),
        ([("request-id", "req_01")], "req_01"),
        ([("X-Request-Id", "bad value\twith tab")], None),
        ([("X-Request-Id", "a" * 129)], None),
    ],
)
def test_the_runtimes_request_id_travels_under_its_own_name(
    given: list[tuple[str, str]], passed: str | None
) -> None:
    out = passed_headers(headers(*given))
    assert "x-request-id" not in out and "request-id" not in out
    assert out.get(NODE_REQUEST_ID) == passed
