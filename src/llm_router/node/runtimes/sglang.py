"""SGLang's server.

From SGLang's documentation and server: ``GET /health``; ``GET /v1/models`` (every listed
model is loaded); ``GET /get_server_info`` (``/server_info`` in newer releases) returns the
server arguments, ``max_running_requests`` among them, plus ``version``; ``/metrics``
(``--enable-metrics``) has ``sglang:num_running_reqs``, ``sglang:num_queue_reqs`` and
``sglang:token_usage`` (KV pool use, 0..1).
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
    positive_int,
    prometheus_values,
    runtime_load,
)

METRICS = {
    "sglang:num_running_reqs": "running",
    "sglang:num_queue_reqs": "waiting",
    "sglang:token_usage": "kv_cache_usage",
}
INFO_PATHS = ("/get_server_info", "/server_info")


def is_server_info(data: Any) -> bool:
    return isinstance(data, dict) and ("max_running_requests" in data or "model_path" in data)


def capacity_of(info: Any) -> int | None:
    if not isinstance(info, dict):
        return None
    found = positive_int(info.get("max_running_requests"))
    if found is not None:
        return found
    # When not set on the command line the scheduler computes it; it reports it per rank.
    states = info.get("internal_states")
    if isinstance(states, list) and states and isinstance(states[0], dict):
        return positive_int(states[0].get("max_running_requests"))
    return None


def version_of(info: Any) -> str | None:
    version = info.get("version") if isinstance(info, dict) else None
    return version if isinstance(version, str) and version else None


async def _server_info(http: RuntimeHttp) -> Any:
    for path in INFO_PATHS:
        info = await http.get(path, optional=True)
        if info is not None:
            return info
    return None


class SglangAdapter:
    kind = RuntimeKind.SGLANG

    async def probe(self, http: RuntimeHttp) -> bool:
        return is_server_info(await _server_info(http))

    async def read(self, http: RuntimeHttp) -> RuntimeReport:
        try:
            problem = await health_problem(http)
            if problem is not None:
                return problem
            specs = openai_specs(await http.get("/v1/models"))
            info = await _server_info(http)
            values = prometheus_values(await http.get_text("/metrics"), METRICS)
        except RuntimeProblem as exc:
            return RuntimeReport.down(exc)
        return RuntimeReport(
            RuntimeStatus.READY,
            models=specs,
            loaded=tuple(s.id for s in specs),
            capacity=capacity_of(info),
            load=runtime_load(values),
            version=version_of(info),
        )
