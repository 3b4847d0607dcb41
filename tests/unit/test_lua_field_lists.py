"""The heartbeat's one read spells out the node-state fields again (a function library is
loaded where ``unpack`` and ``ipairs`` may not exist yet): the two lists must not drift."""

from __future__ import annotations

import re
from importlib import resources


def _lua_list(source: str, name: str) -> list[str]:
    match = re.search(rf"local {name} = \{{(.*?)\}}", source, re.S)
    assert match, name
    return re.findall(r"'([^']+)'", match.group(1))


def test_the_heartbeat_reads_every_state_field_plus_its_token_and_liveness_copy() -> None:
    lib = (resources.files("llm_router.state") / "lua" / "lib.lua").read_text()
    state = _lua_list(lib, "STATE_FIELDS")
    assert "executable_models" in state and "floor_base" in state
    assert _lua_list(lib, "HEARTBEAT_FIELDS") == ["token_hash", "alive_until", *state]
