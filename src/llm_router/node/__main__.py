"""``python -m llm_router.node``: the node agent, configured from ``LLM_ROUTER_*`` (and flags)."""

import sys

from llm_router.cli import main

if __name__ == "__main__":
    sys.exit(main(["node", *sys.argv[1:]]))
