"""Runtime adapters, one module per runtime kind, chosen by ``--runtime-kind`` (BRIEF §12)."""

from __future__ import annotations

from llm_router.node.runtimes.base import (
    RuntimeAdapter,
    RuntimeHttp,
    RuntimeKind,
    RuntimeProblem,
    RuntimeReport,
    RuntimeStatus,
)
from llm_router.node.runtimes.llamacpp import LlamaCppAdapter
from llm_router.node.runtimes.lmstudio import LmStudioAdapter
from llm_router.node.runtimes.mlx import MlxAdapter
from llm_router.node.runtimes.ollama import OllamaAdapter
from llm_router.node.runtimes.openai import OpenAIAdapter
from llm_router.node.runtimes.sglang import SglangAdapter
from llm_router.node.runtimes.vllm import VllmAdapter

ADAPTERS: dict[RuntimeKind, type[RuntimeAdapter]] = {
    RuntimeKind.LLAMACPP: LlamaCppAdapter,
    RuntimeKind.OLLAMA: OllamaAdapter,
    RuntimeKind.VLLM: VllmAdapter,
    RuntimeKind.SGLANG: SglangAdapter,
    RuntimeKind.LMSTUDIO: LmStudioAdapter,
    RuntimeKind.MLX: MlxAdapter,
    RuntimeKind.OPENAI: OpenAIAdapter,
}

# Probe order for ``auto``: the most specific tell first. llama.cpp also answers Ollama's
# /api/tags, and every one of them answers /v1/models, so the generic kind comes last.
PROBE_ORDER = (
    RuntimeKind.LLAMACPP,
    RuntimeKind.OLLAMA,
    RuntimeKind.SGLANG,
    RuntimeKind.VLLM,
    RuntimeKind.LMSTUDIO,
)


class AutoAdapter:
    """Probes until one kind answers, then reads as that kind."""

    kind = RuntimeKind.AUTO

    def __init__(self) -> None:
        self.chosen: RuntimeAdapter | None = None

    async def probe(self, http: RuntimeHttp) -> bool:
        return True

    async def detect(self, http: RuntimeHttp) -> RuntimeAdapter:
        for kind in PROBE_ORDER:
            adapter = ADAPTERS[kind]()
            if await adapter.probe(http):
                return adapter
        if await http.get("/v1/models", optional=True) is None:
            raise RuntimeProblem(
                RuntimeStatus.UNREACHABLE, f"{http.base_url} answers no known runtime API"
            )
        return OpenAIAdapter()

    async def read(self, http: RuntimeHttp) -> RuntimeReport:
        if self.chosen is None:
            try:
                self.chosen = await self.detect(http)
            except RuntimeProblem as exc:
                return RuntimeReport.down(exc)
        return await self.chosen.read(http)

    @property
    def resolved_kind(self) -> RuntimeKind:
        return self.chosen.kind if self.chosen is not None else RuntimeKind.AUTO


def make_adapter(kind: RuntimeKind) -> RuntimeAdapter:
    if kind is RuntimeKind.AUTO:
        return AutoAdapter()
    return ADAPTERS[kind]()


def kind_of(adapter: RuntimeAdapter) -> RuntimeKind:
    """The kind to report: what ``auto`` found, else the adapter's own."""
    return adapter.resolved_kind if isinstance(adapter, AutoAdapter) else adapter.kind


__all__ = [
    "ADAPTERS",
    "AutoAdapter",
    "RuntimeAdapter",
    "RuntimeHttp",
    "RuntimeKind",
    "RuntimeProblem",
    "RuntimeReport",
    "RuntimeStatus",
    "kind_of",
    "make_adapter",
]
