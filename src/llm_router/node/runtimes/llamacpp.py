"""llama.cpp ``llama-server``, single-model or router mode (``--models-dir``).

Facts read from the server's sources (tools/server): ``/health`` is the one endpoint
never behind ``--api-key`` and answers 503 while the model loads; ``/props`` carries
``total_slots`` (``-np``) and ``build_info`` (in router mode it has ``role: "router"``
and no slots); ``/v1/models`` gives ``data[].id`` and, in router mode, each entry's
``status.value`` (``loaded``, ``unloaded``, ``loading``, ``sleeping``...); ``/slots`` lists
slots with ``is_processing``; ``/metrics`` (only with ``--metrics``) has
``llamacpp:requests_processing`` and ``llamacpp:requests_deferred``.
"""

from __future__ import annotations

from typing import Any

from llm_router.node.runtimes.base import (
    RuntimeHttp,
    RuntimeKind,
    RuntimeProblem,
    RuntimeReport,
    RuntimeStatus,
    openai_specs,
    positive_int,
    prometheus_values,
    runtime_load,
)

METRICS = {
    "llamacpp:requests_processing": "running",
    "llamacpp:requests_deferred": "waiting",
    "llamacpp:kv_cache_usage_ratio": "kv_cache_usage",
}
LOADED = frozenset({"loaded"})


def is_llamacpp_props(props: Any) -> bool:
    return isinstance(props, dict) and ("total_slots" in props or "build_info" in props)


def capacity_from_props(props: Any) -> int | None:
    return positive_int(props.get("total_slots")) if isinstance(props, dict) else None


def version_from_props(props: Any) -> str | None:
    build = props.get("build_info") if isinstance(props, dict) else None
    return build if isinstance(build, str) and build else None


def is_router(props: Any) -> bool:
    return isinstance(props, dict) and props.get("role") == "router"


def loaded_models(listing: Any, router: bool) -> tuple[str, ...]:
    """Router mode names each model's state; a single-model server has its one model loaded."""
    items = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(items, list):
        return ()
    loaded = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        status = item.get("status")
        value = status.get("value") if isinstance(status, dict) else None
        if (not router and value is None) or value in LOADED:
            loaded.append(item["id"])
    return tuple(loaded)


def busy_slots(slots: Any) -> int | None:
    if not isinstance(slots, list):
        return None
    return sum(1 for s in slots if isinstance(s, dict) and s.get("is_processing"))


class LlamaCppAdapter:
    kind = RuntimeKind.LLAMACPP

    async def probe(self, http: RuntimeHttp) -> bool:
        return is_llamacpp_props(await http.get("/props", optional=True))

    async def read(self, http: RuntimeHttp) -> RuntimeReport:
        try:
            # /health is open even on a keyed server: the listing below checks the key.
            health = await http.status_of("/health")
            if health == 503:
                return RuntimeReport(RuntimeStatus.LOADING, f"{http.base_url}/health answered 503")
            listing = await http.get("/v1/models")
            specs = openai_specs(listing)
            props = await http.get("/props", optional=True)
            router = is_router(props)
            values: dict[str, float] = {}
            if not router:
                values = prometheus_values(await http.get_text("/metrics"), METRICS)
                if "running" not in values:
                    running = busy_slots(await http.get("/slots", optional=True))
                    if running is not None:
                        values["running"] = running
        except RuntimeProblem as exc:
            return RuntimeReport.down(exc)
        if health != 200:
            return RuntimeReport(
                RuntimeStatus.UNREACHABLE, f"{http.base_url}/health answered {health}"
            )
        return RuntimeReport(
            RuntimeStatus.READY,
            models=specs,
            loaded=loaded_models(listing, router),
            capacity=None if router else capacity_from_props(props),
            load=runtime_load(values),
            version=version_from_props(props),
        )
