#!/usr/bin/env bash
# Set up everything the tests need and run them: lint, types, the full default suite.
# Installs redis-server, and cmake and g++ for the real llama.cpp server, with apt when they
# are missing (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
# The dashboard is tested in a real headless browser.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium fonts-dejavu-core)
# The real-runtime suite (tests/runtime) builds llama.cpp's llama-server from source.
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# The tests start their own redis-server processes on free ports; a system service is not used.

bash scripts/bootstrap.sh

.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
# Build llama-server once (about 5 minutes on 2 cores; cached under ~/.cache/llm-router/),
# before pytest so the build is not counted against a test's timeout. A failure stops here.
nice -n 5 .venv/bin/python -m tests.runtime.llamacpp_build
# pytest exits 5 when it collects nothing: that is a failure here, as any non-zero code is.
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
