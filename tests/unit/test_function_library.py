"""The function library every replica builds from the package's Lua files."""

from __future__ import annotations

import os
import subprocess
import sys

from llm_router.state.scripts import function_library

_NAME = (
    "from llm_router.state.scripts import function_library; "
    "print(function_library().names['acquire'])"
)


def test_every_replica_builds_the_same_library_whatever_its_hash_seed() -> None:
    # A replica is a process with its own string-hash seed; a library assembled in a set's
    # order would differ (and name itself differently) from one replica to the next, and a
    # helper file could land before the one it builds on.
    names = {
        subprocess.run(
            [sys.executable, "-c", _NAME],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in range(8)
    }
    assert names == {function_library().names["acquire"]}


def test_the_walk_helpers_come_after_the_helpers_they_use() -> None:
    source = function_library().source
    walk = source.index("local function best_candidate(")
    assert source.index("local function bounded_choice(") < walk
    assert source.index("local function fair_served(") < walk
