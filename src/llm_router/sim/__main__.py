"""``python -m llm_router.sim``: a simulated node configured from ``LLM_ROUTER_*``."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from llm_router.node.settings import SimNodeSettings
from llm_router.sim.node import run_sim_node


def main() -> int:
    try:
        settings = SimNodeSettings()
    except ValidationError as exc:
        print(f"invalid sim-node settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per control-plane request would drown the agent's own messages.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(run_sim_node(settings))


if __name__ == "__main__":
    sys.exit(main())
