"""``python -m llm_router.node``: the node agent configured from ``LLM_ROUTER_*``."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from llm_router.node.agent import run_node
from llm_router.node.catalog import CatalogError
from llm_router.node.settings import NodeSettings


def main() -> int:
    try:
        settings = NodeSettings()
    except ValidationError as exc:
        print(f"invalid node settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per control-plane request would drown the agent's own messages.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return asyncio.run(run_node(settings))
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
