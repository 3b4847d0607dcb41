"""The simulated runtime on its own (no agent): a stand-in for llama.cpp / vLLM / Ollama.

Used to run the real node agent (``llm-router node --runtime-url ...``) on a machine
without GPUs: ``llm-router sim-runtime --port 9000 --models a,b``.
"""

from __future__ import annotations

import argparse

import uvicorn

from llm_router.sim.runtime import SimConfig, SimRuntime


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--models", required=True, help="comma-separated model ids to serve")
    parser.add_argument("--node-name", default="sim-runtime", help="name used in replies")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="time to first token")
    parser.add_argument("--tokens-per-s", type=float, default=200.0, help="generation rate")
    parser.add_argument("--max-concurrency", type=int, default=64, help="429 beyond this")


def run(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    runtime = SimRuntime(
        SimConfig(
            node_name=args.node_name,
            models=models,
            ttft_ms=args.ttft_ms,
            tokens_per_s=args.tokens_per_s,
            max_concurrency=args.max_concurrency,
        )
    )
    uvicorn.run(
        runtime,
        host=args.host,
        port=args.port,
        http="httptools",
        access_log=False,
        log_level="warning",
        server_header=False,
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="llm-router sim-runtime", description=__doc__)
    add_flags(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
