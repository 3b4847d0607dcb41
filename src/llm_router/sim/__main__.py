"""``python -m llm_router.sim``: a simulated node, configured from ``LLM_ROUTER_*`` (and flags)."""

import sys

from llm_router.cli import main

if __name__ == "__main__":
    sys.exit(main(["sim-node", *sys.argv[1:]]))
