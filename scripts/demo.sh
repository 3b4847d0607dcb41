#!/usr/bin/env bash
# Set up llm-router (the product alone, no test tooling) and run the demo fleet: a router
# on the embedded store and three simulated nodes (metal, cuda, cpu). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --product
exec .venv/bin/llm-router demo "$@"
