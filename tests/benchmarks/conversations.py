"""Conversation benchmark: how much of each turn's prompt the node served from its cache.

C conversations of T turns each run at once through R router replicas (turn t of every
conversation through replica t mod R) to N real ``llama-server`` nodes, each behind a node
agent, with S slots and its host-RAM prompt cache off (``--cache-ram 0``: only the slots
hold prompts, as on a node with a large model). Three modes side by side, on the same
processes, each with its own conversation texts so no mode inherits another's cache:

- ``off``: the routers with affinity off (least loaded only);
- ``on``: the routers with affinity on (the default);
- ``pinned``: each conversation sent straight to one node by hand (conversation c to node
  c mod N): the ceiling of what routing for the cache can reach.

Per mode: the fraction of prompt tokens served from cache on turns 2..T
(``usage.prompt_tokens_details.cached_tokens / prompt_tokens``, or llama.cpp's
``timings.cache_n`` when the usage lacks it), the median and p90 time to first token, and
how evenly the requests spread over the nodes.

    python -m tests.benchmarks.conversations --llama-server PATH --model TINY.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tests.benchmarks.loadgen import percentile
from tests.benchmarks.procs import ProcessStack, Unavailable, free_port, wait_http_ok, wait_port

MODES = ("off", "on", "pinned")
WORDS = [
    *("river", "stone", "lantern", "orchard", "copper", "meadow", "harbor", "violet"),
    *("ember", "thistle", "canyon", "willow", "saffron", "glacier", "marble", "falcon"),
    *("cedar", "prairie", "cobalt", "juniper"),
]


@dataclass
class Turn:
    conversation: int
    turn: int
    node: str
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float
    affinity: str
    #: When the client sent the request and read its last byte (perf_counter seconds).
    span: tuple[float, float] = (0.0, 0.0)


@dataclass
class ModeResult:
    mode: str
    turns: list[Turn] = field(default_factory=list)
    #: The routers' llm_router_affinity_total by "outcome:cause", summed over replicas.
    causes: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        later = [t for t in self.turns if t.turn > 1]
        prompt = sum(t.prompt_tokens for t in later)
        cached = sum(t.cached_tokens for t in later)
        ttfts = [t.ttft_s * 1000 for t in self.turns]
        spread = Counter(t.node for t in self.turns)
        return {
            "mode": self.mode,
            "cached_fraction": cached / prompt if prompt else 0.0,
            "prompt_tokens": prompt,
            "ttft_p50_ms": statistics.median(ttfts) if ttfts else float("nan"),
            "ttft_p90_ms": percentile(ttfts, 90),
            "requests_per_node": sorted(spread.values(), reverse=True),
            "peak_per_node": peak_per_node(self.turns),
            "affinity": dict(Counter(t.affinity for t in self.turns if t.affinity)),
            "affinity_causes": self.causes,
        }


def peak_per_node(turns: list[Turn]) -> list[int]:
    """Most requests at once on each node, as the client saw them (sent to last byte).

    The client's span of a request contains the node's, so this bounds the node's own peak
    from above: a figure at or under the node's slots proves it never ran over capacity.
    """
    peaks = []
    for node in {t.node for t in turns}:
        edges = sorted(
            (at, step)
            for t in turns
            if t.node == node
            for at, step in ((t.span[0], 1), (t.span[1], -1))
        )
        level = peak = 0
        for _, step in edges:
            level += step
            peak = max(peak, level)
        peaks.append(peak)
    return sorted(peaks, reverse=True)


def affinity_causes(routers: list[str]) -> dict[str, float]:
    """Each router's affinity counter by outcome and cause (why pins moved), summed."""
    totals: Counter[str] = Counter()
    for router in routers:
        for line in httpx.get(f"{router}/metrics", timeout=10).text.splitlines():
            if not line.startswith("llm_router_affinity_total{"):
                continue
            labels, _, value = line.rpartition(" ")
            pairs = dict(
                part.split("=", 1) for part in labels[labels.index("{") + 1 : -1].split(",")
            )
            outcome, cause = (pairs.get(k, "").strip('"') for k in ("outcome", "cause"))
            totals[f"{outcome}:{cause}"] += float(value)
    return {k: v for k, v in sorted(totals.items()) if v}


def user_text(mode: str, conversation: int, turn: int, words: int) -> str:
    # Distinct per mode and conversation from the first word: no shared prefix across them.
    seed = zlib.crc32(f"{mode}/{conversation}".encode()) % 1000 + turn * 7
    body = " ".join(WORDS[(seed + i * 3) % len(WORDS)] for i in range(words))
    return f"[{mode} conversation {conversation} turn {turn}] {body}"


def cached_of(payload: dict[str, Any]) -> int:
    details = (payload.get("usage") or {}).get("prompt_tokens_details") or {}
    if isinstance(details.get("cached_tokens"), int):
        return int(details["cached_tokens"])
    return int((payload.get("timings") or {}).get("cache_n") or 0)


async def one_turn(
    http: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> tuple[str, dict[str, Any], float, str, str, tuple[float, float]]:
    """Stream one chat turn: (reply text, last payload with usage, TTFT s, serving node,
    affinity outcome, span)."""
    started = time.perf_counter()
    ttft: float | None = None
    text: list[str] = []
    last: dict[str, Any] = {}
    async with http.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode(errors="replace")[:300]
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {detail}")
        node = response.headers.get("x-llm-router-node", "")
        affinity = response.headers.get("x-llm-router-affinity", "")
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            payload = json.loads(line[5:])
            for choice in payload.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    text.append(piece)
            if payload.get("usage") or payload.get("timings"):
                last = payload
    ended = time.perf_counter()
    if ttft is None:
        ttft = ended - started
    return "".join(text), last, ttft, node, affinity, (started, ended)


async def conversation(
    http: httpx.AsyncClient,
    mode: str,
    c: int,
    args: argparse.Namespace,
    routers: list[str],
    nodes: list[str],
) -> list[Turn]:
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "You are a patient assistant. Answer briefly."}
    ]
    turns = []
    for t in range(1, args.turns + 1):
        messages.append({"role": "user", "content": user_text(mode, c, t, args.words)})
        body = {
            "model": args.model_id,
            "messages": messages,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if mode == "pinned":
            url, node = f"{nodes[c % len(nodes)]}/v1/chat/completions", f"node{c % len(nodes)}"
        else:
            url, node = f"{routers[t % len(routers)]}/v1/chat/completions", ""
        reply, last, ttft, served, affinity, span = await one_turn(http, url, body, {})
        usage = last.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or (last.get("timings") or {}).get("prompt_n") or 0)
        turns.append(Turn(c, t, served or node, prompt, cached_of(last), ttft, affinity, span))
        messages.append({"role": "assistant", "content": reply})
    return turns


async def run_mode(
    mode: str, args: argparse.Namespace, routers: list[str], nodes: list[str]
) -> ModeResult:
    result = ModeResult(mode)
    # No keep-alive: llama-server closes an idle connection after a few seconds, and a turn
    # that reuses one it is closing fails with "server disconnected" (a race, not a result).
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        per_conversation = await asyncio.gather(
            *(conversation(http, mode, c, args, routers, nodes) for c in range(args.conversations))
        )
    for turns in per_conversation:
        result.turns += turns
    return result


class Stack:
    """Redis, N llama-server nodes with agents, and one router fleet per affinity mode."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.procs = ProcessStack(work / "logs")
        self.python = sys.executable

    def redis(self) -> str:
        port = free_port()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no"]
        proc = self.procs.start("redis", argv)
        wait_port(proc, port, 10)
        return f"redis://127.0.0.1:{port}/0"

    def runtime(self, i: int) -> str:
        port = free_port()
        if self.args.sim:
            # The harness's plumbing without llama.cpp: the simulated runtime reports no cache.
            argv = [self.python, "-m", "llm_router.sim.standalone", "--port", str(port)]
            argv += ["--models", self.args.model_id, "--max-concurrency", str(self.args.slots)]
            proc = self.procs.start(f"sim-{i}", argv)
            wait_http_ok(proc, f"http://127.0.0.1:{port}/v1/models", 30)
            return f"http://127.0.0.1:{port}"
        argv = [
            str(self.args.llama_server),
            "-m",
            str(self.args.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-np",
            str(self.args.slots),
            "-c",
            str(self.args.ctx * self.args.slots),
            "--cache-ram",
            "0",
            "--alias",
            self.args.model_id,
            "-t",
            "1",
        ]
        proc = self.procs.start(f"llama-{i}", argv)
        wait_http_ok(proc, f"http://127.0.0.1:{port}/health", 120)
        return f"http://127.0.0.1:{port}"

    def router(self, name: str, redis_url: str, prefix: str, affinity: bool) -> str:
        port = free_port()
        argv = [self.python, "-m", "llm_router.cli", "serve", "--port", str(port)]
        argv += ["--redis-url", redis_url, "--key-prefix", prefix, "--auth-disabled"]
        argv += ["--heartbeat-interval-s", "1", "--node-timeout-s", "3", "--log-level", "warning"]
        argv += ["--affinity" if affinity else "--no-affinity"]
        argv += ["--affinity-margin", str(self.args.margin)]
        proc = self.procs.start(name, argv)
        wait_http_ok(proc, f"http://127.0.0.1:{port}/readyz", 30)
        return f"http://127.0.0.1:{port}"

    def agent(self, name: str, router: str, runtime: str) -> None:
        port = free_port()
        argv = [self.python, "-m", "llm_router.cli", "node", "--router-url", router]
        argv += ["--runtime-url", runtime, "--port", str(port), "--machine-name", name]
        argv += ["--max-concurrency", str(self.args.slots), "--gpu-backend", "cpu"]
        argv += ["--log-level", "warning"]
        self.procs.start(name, argv)

    def wait_nodes(self, router: str, count: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            nodes = httpx.get(f"{router}/v0/nodes", timeout=5).json()
            if sum(n.get("status") == "online" for n in nodes) >= count:
                return
            time.sleep(0.2)
        raise Unavailable(f"fewer than {count} nodes online at {router}")


def print_table(rows: list[dict[str, Any]], slots: int) -> None:
    print(
        f"{'mode':<8} {'cached':>7} {'prompt tok':>10} {'TTFT p50':>9} {'p90':>8}  "
        "requests per node / peak at once"
    )
    for r in rows:
        print(
            f"{r['mode']:<8} {r['cached_fraction']:7.2f} {r['prompt_tokens']:>10} "
            f"{r['ttft_p50_ms']:7.1f}ms {r['ttft_p90_ms']:6.1f}ms  {r['requests_per_node']}"
            f" / {r['peak_per_node']} (slots {slots})"
        )
    by_mode = {r["mode"]: r for r in rows}
    ceiling = by_mode.get("pinned", {}).get("cached_fraction")
    if ceiling:
        for mode in ("off", "on"):
            if mode in by_mode:
                ratio = by_mode[mode]["cached_fraction"] / ceiling
                print(f"{mode}: {ratio:.2f} of the pinned ceiling")


def print_turns(result: ModeResult) -> None:
    """One line per conversation: each turn's node, cached/prompt tokens and affinity."""
    for c in sorted({t.conversation for t in result.turns}):
        turns = sorted((t for t in result.turns if t.conversation == c), key=lambda t: t.turn)
        cells = (f"{t.node[-6:]} {t.cached_tokens}/{t.prompt_tokens} {t.affinity}" for t in turns)
        print(f"  {result.mode} #{c}: " + " | ".join(cells), flush=True)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="llmr-conv-") as tmp:
        stack = Stack(args, Path(tmp))
        try:
            redis_url = stack.redis()
            runtimes = [stack.runtime(i) for i in range(args.nodes)]
            rows = []
            for mode in args.modes:
                routers: list[str] = []
                if mode != "pinned":
                    prefix = f"conv{mode}{os.getpid()}"
                    routers = [
                        stack.router(f"router-{mode}-{r}", redis_url, prefix, mode == "on")
                        for r in range(args.replicas)
                    ]
                    for i, runtime in enumerate(runtimes):
                        stack.agent(f"node{i}-{mode}", routers[i % len(routers)], runtime)
                    stack.wait_nodes(routers[0], len(runtimes))
                result = await run_mode(mode, args, routers, runtimes)
                result.causes = affinity_causes(routers)
                rows.append(result.summary())
                if args.detail:
                    print_turns(result)
                print(json.dumps(rows[-1]), flush=True)
            return rows
        finally:
            stack.procs.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.conversations", description=__doc__
    )
    p.add_argument("--llama-server", type=Path, help="llama-server binary")
    p.add_argument("--model", type=Path, help="GGUF model file")
    p.add_argument("--sim", action="store_true", help="simulated runtimes (checks the harness)")
    p.add_argument("--model-id", default="tiny", help="the model's id (llama-server --alias)")
    p.add_argument("--conversations", type=int, default=5)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--ctx", type=int, default=2048, help="context per slot (tokens)")
    p.add_argument("--words", type=int, default=120, help="words per user message")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    p.add_argument("--detail", action="store_true", help="print every conversation's turns")
    p.add_argument("--margin", type=float, default=0.5, help="the routers' AFFINITY_MARGIN")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        p.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    if not args.sim:
        if args.llama_server is None or not args.llama_server.exists():
            p.error(f"no llama-server at {args.llama_server} (or pass --sim)")
        if args.model is None or not args.model.exists():
            p.error(f"no model file at {args.model}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = asyncio.run(main_async(args))
    print_table(rows, args.slots)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
