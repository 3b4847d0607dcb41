"""What every runtime adapter shares: the report it produces and the HTTP it speaks.

An adapter reads one runtime (llama.cpp, Ollama, vLLM...) and answers one question per
heartbeat: is it serving, and with what (models, loaded models, capacity, load, version)?
Parsing is kept in pure functions over decoded JSON so the contract tests can feed them
the shapes each runtime documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import httpx

from llm_router.gpu import ModelSpec
from llm_router.protocol import RuntimeStatus as RuntimeStatus


class RuntimeKind(StrEnum):
    AUTO = "auto"
    LLAMACPP = "llamacpp"
    OLLAMA = "ollama"
    VLLM = "vllm"
    SGLANG = "sglang"
    LMSTUDIO = "lmstudio"
    MLX = "mlx"
    OPENAI = "openai"


@dataclass(frozen=True)
class RuntimeReport:
    """One reading of a runtime. ``models`` is None unless the runtime is ready."""

    status: RuntimeStatus
    detail: str = ""
    models: tuple[ModelSpec, ...] | None = None
    loaded: tuple[str, ...] = ()
    capacity: int | None = None
    load: Mapping[str, float] = field(default_factory=dict)
    version: str | None = None

    @classmethod
    def down(cls, problem: RuntimeProblem) -> RuntimeReport:
        return cls(status=problem.status, detail=problem.detail)


class RuntimeProblem(Exception):
    """The runtime did not serve a call; ``status`` says how to report it."""

    def __init__(self, status: RuntimeStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class RuntimeHttp:
    """GETs against one runtime, with its API key, classified into runtime statuses."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, api_key: str | None) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def get(self, path: str, *, optional: bool = False) -> Any:
        """The decoded JSON at ``path``.

        ``optional``: an endpoint this runtime may lack (404, 405, 501, non-JSON) gives None
        instead of a problem. 401/403 is always a problem: it means the key is wrong.
        """
        response = await self._get(path)
        return self._decode(path, response, optional)

    async def get_text(self, path: str) -> str | None:
        """A text endpoint (Prometheus ``/metrics``); None when absent or failing."""
        try:
            response = await self._get(path)
        except RuntimeProblem as exc:
            if exc.status is RuntimeStatus.UNAUTHORIZED:
                raise
            return None
        return response.text if response.status_code == 200 else None

    async def status_of(self, path: str) -> int:
        response = await self._get(path)
        self._check_auth(path, response)
        return response.status_code

    async def _get(self, path: str) -> httpx.Response:
        url = self.base_url + path
        try:
            return await self.client.get(url, headers=self.headers)
        except httpx.TimeoutException as exc:
            raise RuntimeProblem(RuntimeStatus.UNREACHABLE, f"{url} timed out") from exc
        except httpx.HTTPError as exc:
            raise RuntimeProblem(
                RuntimeStatus.UNREACHABLE, f"{url}: {type(exc).__name__} {exc}".strip()
            ) from exc

    def _check_auth(self, path: str, response: httpx.Response) -> None:
        if response.status_code in (401, 403):
            raise RuntimeProblem(
                RuntimeStatus.UNAUTHORIZED,
                f"{self.base_url}{path} answered {response.status_code}",
            )

    def _decode(self, path: str, response: httpx.Response, optional: bool) -> Any:
        self._check_auth(path, response)
        code = response.status_code
        answered = f"{self.base_url}{path} answered {code}"
        if code == 503:
            raise RuntimeProblem(RuntimeStatus.LOADING, answered)
        if code >= 500 and not (optional and code == 501):
            raise RuntimeProblem(RuntimeStatus.UNREACHABLE, answered)
        if code != 200:
            if optional:
                return None
            raise RuntimeProblem(RuntimeStatus.UNREACHABLE, answered)
        try:
            return response.json()
        except ValueError as exc:
            if optional:
                return None
            raise RuntimeProblem(
                RuntimeStatus.UNREACHABLE, f"{self.base_url}{path} did not answer JSON"
            ) from exc


class RuntimeAdapter(Protocol):
    """One runtime kind. ``read`` never raises for the runtime's own failures."""

    kind: RuntimeKind

    async def probe(self, http: RuntimeHttp) -> bool:
        """True when the runtime at ``http`` looks like this kind (auto-detection)."""
        ...

    async def read(self, http: RuntimeHttp) -> RuntimeReport: ...


# --- shared parsers --------------------------------------------------------------------


async def health_problem(http: RuntimeHttp) -> RuntimeReport | None:
    """The report for a runtime whose ``GET /health`` is not 200 (503: still loading), or None
    when it is healthy. vLLM and SGLang answer it the same way."""
    health = await http.status_of("/health")
    if health == 200:
        return None
    status = RuntimeStatus.LOADING if health == 503 else RuntimeStatus.UNREACHABLE
    return RuntimeReport(status, f"{http.base_url}/health answered {health}")


def openai_model_ids(data: Any) -> list[str] | None:
    """``data[].id`` of an OpenAI ``/v1/models`` listing; None when it is not one."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return [
        item["id"]
        for item in items
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]
    ]


def openai_specs(data: Any) -> tuple[ModelSpec, ...]:
    ids = openai_model_ids(data)
    if ids is None:
        raise RuntimeProblem(RuntimeStatus.UNREACHABLE, "the model listing is not an OpenAI list")
    return tuple(ModelSpec(id=i) for i in dict.fromkeys(ids))


def prometheus_values(text: str | None, names: Mapping[str, str]) -> dict[str, float]:
    """Sum the samples of each metric in ``names`` (metric → report key) over its labels.

    Sums, because a runtime serving several models reports one series per model.
    """
    found: dict[str, float] = {}
    if not text:
        return found
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        metric, _, rest = line.partition(" ")
        name = metric.split("{", 1)[0]
        if "{" in metric and "}" not in metric:
            # A label value with a space: the sample value follows the closing brace.
            metric, _, rest = line.partition("} ")
        key = names.get(name)
        if key is None:
            continue
        try:
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        found[key] = found.get(key, 0.0) + value
    return found


def runtime_load(values: Mapping[str, float]) -> dict[str, float]:
    """Load figures in the wire shape: counts as integers, cache usage as a 0..1 fraction."""
    load: dict[str, float] = {}
    for key in ("running", "waiting"):
        if key in values and values[key] >= 0:
            load[key] = int(values[key])
    usage = values.get("kv_cache_usage")
    if usage is not None and usage >= 0:
        # Some runtimes report a percentage, most a fraction.
        load["kv_cache_usage"] = round(min(usage / 100.0 if usage > 1 else usage, 1.0), 4)
    return load


def positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = int(value)
    return number if number >= 1 else None
