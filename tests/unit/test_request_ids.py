"""The ids the request path mints: uuid4-shaped, distinct, and distinct across forks
(``serve --workers`` may fork replicas that share one Redis)."""

from __future__ import annotations

import os
import re

import pytest

from llm_router.routing.ids import new_id

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_ids_are_32_hex_digits_and_distinct() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert all(_HEX32.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.close(read)
        os.write(write, "".join(new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    parent = [new_id() for _ in range(8)]
    with os.fdopen(read, "rb") as pipe:
        child_text = pipe.read().decode()
    os.waitpid(pid, 0)
    child = [child_text[i : i + 32] for i in range(0, len(child_text), 32)]
    assert len(child) == 8
    assert not set(child) & set(parent)
