"""Fixtures of the real-runtime suite, reusable by other suites (endpoints, benchmarks).

- ``llama_server_binary`` (session): the built ``llama-server``; built on first use (about
  5 minutes on 2 cores), then cached under ``~/.cache/llm-router/``. A machine that cannot
  build it fails the suite, loudly.
- ``tiny_model`` (session): ``tiny_model("name")`` writes (once) a tiny random-weight GGUF
  model called ``name`` and returns its path.
- ``llama_server``: ``llama_server(model, *args, api_key=None)`` starts a real server and
  waits until it is healthy; every server started is killed at the end of the test.
- ``runtime_fleet``: routers on the session's redis-server plus agents in front of servers.
- ``open_llama_servers``, ``open_runtime_fleet``: the same as context managers, for a fleet
  a whole module shares.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .llama import LlamaServer, RuntimeFleet
from .llamacpp_build import llama_server_path
from .tiny_model import write_tiny_model

TinyModel = Callable[[str], Path]
StartLlama = Callable[..., LlamaServer]


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    return llama_server_path()


@pytest.fixture(scope="session")
def tiny_model(llama_server_binary: Path) -> Iterator[TinyModel]:
    # The tokenizer comes from the source tree the build keeps: the binary comes first.
    root = Path(tempfile.mkdtemp(prefix="llmr-models-"))
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            made[name] = write_tiny_model(root / f"{name}.gguf", name=name, seed=len(made))
        return made[name]

    try:
        yield make
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def open_llama_servers(binary: Path) -> Iterator[StartLlama]:
    workdir = Path(tempfile.mkdtemp(prefix="llmr-llama-"))
    started: list[LlamaServer] = []

    def start(model: Path | None, *args: str, api_key: str | None = None) -> LlamaServer:
        # The alias is the model id the server lists (else it lists the file's full path).
        argv = ["-m", str(model), "--alias", model.stem, *args] if model else list(args)
        # Small contexts and one thread: several servers share 2 cores with the fleet.
        server = LlamaServer(binary, [*argv, "-c", "512", "-t", "1"], workdir, api_key=api_key)
        started.append(server)
        return server.start().wait_healthy()

    try:
        yield start
    finally:
        for server in started:
            print(f"--- llama-server :{server.port}\n{server.log_tail()}")
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def open_runtime_fleet(redis_url: str) -> Iterator[RuntimeFleet]:
    fleet = RuntimeFleet(redis_url)
    try:
        yield fleet
    finally:
        print(fleet.logs())
        fleet.close()


@pytest.fixture
def llama_server(llama_server_binary: Path) -> Iterator[StartLlama]:
    with open_llama_servers(llama_server_binary) as start:
        yield start


@pytest.fixture
def runtime_fleet(redis_url: str) -> Iterator[RuntimeFleet]:
    with open_runtime_fleet(redis_url) as fleet:
        yield fleet
