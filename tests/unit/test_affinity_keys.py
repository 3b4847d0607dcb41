"""Affinity keys from request bodies: what makes two requests the same conversation."""

from __future__ import annotations

from typing import Any

from llm_router.routing.affinity import BLOCK_BYTES, AffinityPolicy

CHAT = "/v1/chat/completions"
POLICY = AffinityPolicy(enabled=True, ttl_ms=600_000, margin=500_000)


def keys(body: dict[str, Any], path: str = CHAT, **headers: str) -> tuple[str, ...]:
    return POLICY.for_request(path, str(body.get("model", "m")), body, headers).keys


def chat(*messages: tuple[str, str], model: str = "m") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": r, "content": c} for r, c in messages]}


SYSTEM = ("system", "You are terse.")


def test_every_turn_of_a_conversation_leads_with_the_same_key() -> None:
    turn1 = keys(chat(SYSTEM, ("user", "Tell me about otters.")))
    turn2 = keys(
        chat(
            SYSTEM,
            ("user", "Tell me about otters."),
            ("assistant", "Otters are aquatic mustelids. " * 40),
            ("user", "And beavers?"),
        )
    )
    turn3 = keys(
        chat(
            SYSTEM,
            ("user", "Tell me about otters."),
            ("assistant", "Otters are aquatic mustelids. " * 40),
            ("user", "And beavers?"),
            ("assistant", "Rodents."),
            ("user", "Thanks"),
        )
    )
    assert turn1[0] == turn2[0] == turn3[0]
    assert len(turn1) == 1  # turn 1 is shorter than a block: the opening only
    assert turn2[1:] == turn3[1:]  # the same full leading blocks


def test_conversations_sharing_a_long_system_prompt_differ_in_their_opening() -> None:
    system = ("system", "Rules of the house. " * 200)  # several blocks
    a = keys(chat(system, ("user", "first question")))
    b = keys(chat(system, ("user", "another question")))
    assert a[0] != b[0]
    # The leading blocks hold the shared system prompt only: a new conversation finds the
    # node that has it cached.
    assert a[1:] == b[1:] and len(a[1:]) == 2


def test_blocks_are_most_specific_first() -> None:
    prompt = "x" * (3 * BLOCK_BYTES)
    longer = keys({"model": "m", "prompt": prompt}, "/v1/completions")
    shorter = keys({"model": "m", "prompt": prompt[: BLOCK_BYTES + 10]}, "/v1/completions")
    assert len(longer) == 2 and len(shorter) == 1
    assert longer[1] == shorter[0]  # one block in common


def test_a_prompt_shorter_than_a_block_has_no_key() -> None:
    assert keys({"model": "m", "prompt": "short"}, "/v1/completions") == ()


def test_the_model_is_part_of_every_key() -> None:
    body = chat(("user", "hello"))
    assert set(keys(body)).isdisjoint(keys({**body, "model": "other"}))


def test_session_header_is_the_only_key() -> None:
    body = chat(SYSTEM, ("user", "hello"))
    by_session = keys(body, **{"x-session-id": "abc"})
    assert len(by_session) == 1
    assert by_session == keys(chat(("user", "something else")), **{"x-session-id": "abc"})
    assert by_session != keys(body, **{"x-session-id": "abd"})
    assert by_session[0] not in keys(body)


def test_previous_response_id_comes_first() -> None:
    body = {"model": "m", "input": "next", "previous_response_id": "resp_1"}
    with_previous = keys(body, "/v1/responses")
    assert len(with_previous) == 2
    assert with_previous[1] == keys({"model": "m", "input": "next"}, "/v1/responses")[0]


def test_anthropic_system_field_is_part_of_the_opening() -> None:
    a = keys({"model": "m", "system": "be brief", "messages": [{"role": "user", "content": "hi"}]})
    b = keys({"model": "m", "system": "be long", "messages": [{"role": "user", "content": "hi"}]})
    assert a != b


def test_content_parts_are_keyed_too() -> None:
    parts = [{"type": "text", "text": "look"}]
    body = {"model": "m", "messages": [{"role": "user", "content": parts}]}
    assert len(keys(body)) == 1


def test_opt_out_disabled_and_embeddings_have_no_keys() -> None:
    body = chat(("user", "hello"))
    assert keys(body, **{"x-llm-router-affinity": "off"}) == ()
    off = AffinityPolicy(enabled=False, ttl_ms=1, margin=0)
    assert off.for_request(CHAT, "m", body, {}).keys == ()
    assert keys({"model": "m", "input": "hello " * 500}, "/v1/embeddings") == ()


def test_odd_bodies_never_raise() -> None:
    for body in (
        {"model": "m", "messages": "just text"},
        {"model": "m", "messages": [1, None, "x", {"role": None}]},
        {"model": "m", "messages": None, "prompt": [1, 2, 3] * 400},
        {"model": "m", "prompt": []},
        {"model": "m", "system": {"weird": True}, "messages": []},
    ):
        keys(body)
