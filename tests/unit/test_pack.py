"""The request path's command encoding: hiredis's packer and our fallback agree byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_router.state.multiplex import _pack, _pack_slow


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "a" * 40, 1, "{llmr}:", "model/odd:chars", "", 60_000, -3, 0.5, b"\x00\r"),
        ("PING",),
        ("SET", "k", "ünïcode"),
    ],
)
def test_hiredis_packer_matches_the_fallback(args: tuple[bytes | str | int | float, ...]) -> None:
    assert _pack(args) == _pack_slow(args)


def test_what_hiredis_refuses_is_still_encoded() -> None:
    assert _pack(("X", True)) == b"*2\r\n$1\r\nX\r\n$4\r\nTrue\r\n"


_ARG = st.one_of(
    st.sampled_from([0, 0.0, -0.0, 1.0, "", b"", "0"]),
    st.text(max_size=16),
    st.binary(max_size=16),
    st.integers(),
    st.floats(),
)


@given(st.lists(_ARG, min_size=1, max_size=30))
def test_any_script_call_is_encoded_as_the_fallback_encodes_it(args: list[object]) -> None:
    command = ("FCALL", "f", 1, "{k}", *args)
    assert _pack(command) == _pack_slow(command)  # type: ignore[arg-type]
