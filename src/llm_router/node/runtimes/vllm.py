"""vLLM's OpenAI server.

From vLLM's documentation and server: ``GET /health`` answers 200 when the engine is up;
``GET /v1/models`` lists the served model (``max_model_len`` on each entry; every listed
model is loaded); ``GET /version`` gives ``{"version": ...}``; ``/metrics`` has
``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` (a 0..1 fraction; ``vllm:gpu_cache_usage_perc`` before v0.10).
``--api-key`` guards the ``/v1`` routes only, so the listing is what tells a wrong key.
``max_num_seqs`` is not in the API: capacity comes from ``--max-concurrency``.
"""

from __future__ import annotations

from typing import Any

from llm_router.node.runtimes.base import (
    RuntimeHttp,
    RuntimeKind,
    RuntimeProblem,
    RuntimeReport,
    RuntimeStatus,
    health_problem,
    openai_specs,
    prometheus_values,
    runtime_load,
)

METRICS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",
}


def version_of(data: Any) -> str | None:
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, str) and version else None


class VllmAdapter:
    kind = RuntimeKind.VLLM

    async def probe(self, http: RuntimeHttp) -> bool:
        data = await http.get("/version", optional=True)
        return version_of(data) is not None

    async def read(self, http: RuntimeHttp) -> RuntimeReport:
        try:
            problem = await health_problem(http)
            if problem is not None:
                return problem
            specs = openai_specs(await http.get("/v1/models"))
            version = version_of(await http.get("/version", optional=True))
            values = prometheus_values(await http.get_text("/metrics"), METRICS)
        except RuntimeProblem as exc:
            return RuntimeReport.down(exc)
        return RuntimeReport(
            RuntimeStatus.READY,
            models=specs,
            loaded=tuple(s.id for s in specs),
            load=runtime_load(values),
            version=version,
        )
