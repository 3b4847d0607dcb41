"""The node hop's HTTP client against aiohttp's: same process, same upstream, same load.

``python -m tests.benchmarks.hop_client_bench [--duration 3] [--rounds 3]
[--concurrency 1,16]``: starts the fast upstream (``upstream.py`` on uvicorn), then, in
this process on uvloop, runs ``concurrency`` tasks that each POST the benchmark chat body
in a loop, once through ``HopClient`` and once through a pooled ``aiohttp.ClientSession``
configured as the proxy configured it, alternating which goes first each round. Prints the
medians of requests/s and of this process's CPU µs per request (user + system: the
client is all this process does), and the ratios lean / aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop
from tests.benchmarks.procs import ProcessStack
from tests.benchmarks.targets import CHAT_BODY, Settings, start_upstream

from llm_router.routing.hop_client import HopClient

Send = Callable[[], Awaitable[int]]
_HEADERS = {"content-type": "application/json", "x-request-id": "bench"}
_BODY = json.dumps(CHAT_BODY).encode()
_PATH = "/v1/chat/completions"


async def _drive(send: Send, concurrency: int, duration: float) -> tuple[float, float]:
    """Requests/s and CPU µs per request for ``duration`` seconds of ``concurrency`` loops."""
    for _ in range(20 * concurrency):  # warm the pool
        await send()
    done = 0
    stop = time.monotonic() + duration

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < stop:
            if await send() != 200:
                raise RuntimeError("the upstream did not answer 200")
            done += 1

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return done / wall, cpu / done * 1e6


async def _lean(origin: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    client = HopClient(connect_timeout_s=5, idle_timeout_s=120)

    async def send() -> int:
        response = await client.request("POST", origin, _PATH, _BODY, dict(_HEADERS))
        async for _ in response:
            pass
        response.release()
        return response.status

    return send, client.close


async def _aiohttp(origin: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    # As the proxy configured it before the lean client replaced it.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=120),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )
    url = origin + _PATH

    async def send() -> int:
        response = await session.request(
            "POST", url, data=_BODY, headers=dict(_HEADERS), allow_redirects=False
        )
        async for _ in response.content.iter_any():
            pass
        response.release()
        return response.status

    return send, session.close


CLIENTS = {"lean": _lean, "aiohttp": _aiohttp}


async def _measure(
    origin: str, name: str, concurrency: int, duration: float
) -> tuple[float, float]:
    send, close = await CLIENTS[name](origin)
    try:
        return await _drive(send, concurrency, duration)
    finally:
        await close()


def run(
    origin: str, concurrencies: list[int], duration: float, rounds: int
) -> list[dict[str, float]]:
    rows = []
    for concurrency in concurrencies:
        seen: dict[str, list[tuple[float, float]]] = {name: [] for name in CLIENTS}
        for round_ in range(rounds):
            order = list(CLIENTS) if round_ % 2 == 0 else list(reversed(CLIENTS))
            for name in order:
                seen[name].append(uvloop.run(_measure(origin, name, concurrency, duration)))
        row: dict[str, float] = {"concurrency": concurrency}
        for name, results in seen.items():
            row[f"{name}_rps"] = statistics.median(r for r, _ in results)
            row[f"{name}_cpu_us"] = statistics.median(c for _, c in results)
        row["rps_ratio"] = row["lean_rps"] / row["aiohttp_rps"]
        row["cpu_ratio"] = row["aiohttp_cpu_us"] / row["lean_cpu_us"]
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, float]]) -> None:
    print(
        "| c | lean req/s | aiohttp req/s | req/s lean/aiohttp | lean CPU µs/req |"
        " aiohttp CPU µs/req | CPU efficiency lean/aiohttp |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['concurrency']:.0f} | {r['lean_rps']:,.0f} | {r['aiohttp_rps']:,.0f} |"
            f" {r['rps_ratio']:.2f}x | {r['lean_cpu_us']:,.0f} | {r['aiohttp_cpu_us']:,.0f} |"
            f" {r['cpu_ratio']:.2f}x |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", default="1,16")
    args = p.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        stack = ProcessStack(Path(tmp) / "logs")
        try:
            cfg = Settings(work_dir=Path(tmp), server_cpus=None, cache_dir=Path(tmp))
            _, port = start_upstream(stack, cfg)
            rows = run(f"http://127.0.0.1:{port}", concurrencies, args.duration, args.rounds)
        finally:
            stack.close()
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
