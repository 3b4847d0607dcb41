"""``mlx_lm.server`` (Apple MLX): an OpenAI-compatible ``GET /v1/models`` and nothing more.

It executes MLX weights only, so its models are reported in the MLX format (executable on
Metal alone, BRIEF §4). Capacity, load and version are not exposed: capacity comes from
``--max-concurrency``.
"""

from __future__ import annotations

from llm_router.gpu import ModelFormat
from llm_router.node.runtimes.base import RuntimeHttp, RuntimeKind
from llm_router.node.runtimes.openai import OpenAIAdapter


class MlxAdapter(OpenAIAdapter):
    kind = RuntimeKind.MLX
    model_format = ModelFormat.MLX

    async def probe(self, http: RuntimeHttp) -> bool:
        # Nothing in its API tells it from any other OpenAI server.
        return False
