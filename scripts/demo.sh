#!/usr/bin/env bash
# Set up llm-router and run the demo fleet: a router on the embedded store and three
# simulated nodes (metal, cuda, cpu). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/llm-router demo "$@"
