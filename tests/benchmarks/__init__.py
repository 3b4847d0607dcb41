"""Benchmarks: router overhead against direct, nginx, a bare Python proxy and LiteLLM.

Run ``python -m tests.benchmarks.run --quick`` from the repository root; see
``docs/performance.md``. Kept out of the default pytest run on purpose: they measure the
machine, they do not assert.
"""
