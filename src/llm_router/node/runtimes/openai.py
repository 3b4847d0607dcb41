"""Any OpenAI-compatible server: only ``GET /v1/models`` is assumed.

Every listed model is taken as loaded (such a server answers for what it lists); capacity,
load and version are unknown.
"""

from __future__ import annotations

from llm_router.gpu import ModelFormat, ModelSpec
from llm_router.node.runtimes.base import (
    RuntimeHttp,
    RuntimeKind,
    RuntimeProblem,
    RuntimeReport,
    RuntimeStatus,
    openai_specs,
)


class OpenAIAdapter:
    kind = RuntimeKind.OPENAI
    # A runtime that executes one weight format only says so here (MLX).
    model_format: ModelFormat | None = None

    async def probe(self, http: RuntimeHttp) -> bool:
        return await http.get("/v1/models", optional=True) is not None

    async def read(self, http: RuntimeHttp) -> RuntimeReport:
        try:
            specs = openai_specs(await http.get("/v1/models"))
        except RuntimeProblem as exc:
            return RuntimeReport.down(exc)
        if self.model_format is not None:
            specs = tuple(ModelSpec(id=s.id, format=self.model_format) for s in specs)
        return RuntimeReport(RuntimeStatus.READY, models=specs, loaded=tuple(s.id for s in specs))
