#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install llm-router into it, editable.
#   bash scripts/bootstrap.sh            the product and everything the tests need
#   bash scripts/bootstrap.sh --product  the product alone (what the demo runs on)
set -euo pipefail
cd "$(dirname "$0")/.."

spec='.[test,otel]'
[ "${1:-}" = "--product" ] && spec='.'

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Editable installs of a pyproject-only package need pip 21.3 or later; upgrading an already
# recent pip would only cost the demo a round trip to the index.
if ! .venv/bin/python - <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if tuple(int(p) for p in version("pip").split(".")[:2]) >= (21, 3) else 1)
PY
then
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
