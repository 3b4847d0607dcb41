"""Load generators: ``wrk`` (non-streaming throughput/latency) and an aiohttp streaming client.

wrk's Lua ``done`` callback prints one JSON line with the counts and latency percentiles,
so nothing depends on parsing wrk's human-readable output.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from tests.benchmarks.procs import pin_prefix

_MARK = "BENCH_JSON "

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"max_us":%.1f,' ..
    '"mean_us":%.1f}\\n',
    "MARK", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
""".replace("MARK", _MARK)


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def wrk_script(path: Path, *, method: str, body: bytes, headers: dict[str, str]) -> Path:
    lines = [f"wrk.method = {_lua_string(method)}", f"wrk.body = {_lua_string(body.decode())}"]
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n" + _DONE)
    return path


@dataclass
class WrkResult:
    concurrency: int
    requests: int
    ok: int
    errors: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_us_per_req: float | None = None
    redis_cpu_us_per_req: float | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    script: Path,
    *,
    concurrency: int,
    duration_s: float,
    cpus: str | None,
    threads: int,
    timeout_s: float = 10.0,
) -> WrkResult:
    threads = max(1, min(threads, concurrency))
    argv = [
        *pin_prefix(cpus),
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{max(1, round(duration_s))}s",
        "--timeout",
        f"{timeout_s:.0f}s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_MARK)), None)
    if line is None:
        raise RuntimeError(
            f"wrk produced no result (rc={done.returncode}): {(done.stderr or done.stdout)[-300:]}"
        )
    data = json.loads(line[len(_MARK) :])
    duration = data["duration_us"] / 1e6
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    ok = max(data["requests"] - data["status"], 0)
    return WrkResult(
        concurrency=concurrency,
        requests=data["requests"],
        ok=ok,
        errors=errors,
        duration_s=duration,
        rps=ok / duration if duration else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )


# --- streaming ------------------------------------------------------------------------------


@dataclass
class StreamResult:
    concurrency: int
    requests: int
    errors: int
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    total_p50_ms: float
    total_p99_ms: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _stream_worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    deadline: float,
    budget: list[int],
    out: tuple[list[float], list[float], list[int]],
) -> None:
    ttfbs, totals, errors = out
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                first = await response.content.readany()
                ttfb = time.perf_counter() - start
                rest = await response.read()
                total = time.perf_counter() - start
                if response.status != 200 or b"[DONE]" not in first + rest:
                    errors[0] += 1
                    continue
        except (aiohttp.ClientError, TimeoutError):
            errors[0] += 1
            continue
        ttfbs.append(ttfb * 1000)
        totals.append(total * 1000)


async def _stream_run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration_s: float,
    max_requests: int,
) -> StreamResult:
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0)
    out: tuple[list[float], list[float], list[int]] = ([], [], [0])
    budget = [max_requests]
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # One unmeasured request per connection so connection set-up is not in the figures.
        warm = [session.post(url, data=body, headers=headers) for _ in range(concurrency)]
        for response in await asyncio.gather(*warm, return_exceptions=True):
            if isinstance(response, aiohttp.ClientResponse):
                await response.read()
                response.release()
        deadline = time.perf_counter() + duration_s
        await asyncio.gather(
            *(
                _stream_worker(session, url, body, headers, deadline, budget, out)
                for _ in range(concurrency)
            )
        )
    ttfbs, totals, errors = out
    return StreamResult(
        concurrency=concurrency,
        requests=len(totals),
        errors=errors[0],
        ttfb_p50_ms=statistics.median(ttfbs) if ttfbs else float("nan"),
        ttfb_p99_ms=percentile(ttfbs, 99),
        total_p50_ms=statistics.median(totals) if totals else float("nan"),
        total_p99_ms=percentile(totals, 99),
    )


def run_stream(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int = 20_000,
) -> StreamResult:
    return asyncio.run(_stream_run(url, body, headers, concurrency, duration_s, max_requests))


async def _status_sample(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, total: int
) -> dict[str, object]:
    statuses: dict[int, int] = {}
    first_error: list[str] = []
    budget = [total]
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:

        async def worker() -> None:
            while budget[0] > 0:
                budget[0] -= 1
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        text = await response.read()
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                        if response.status >= 400 and not first_error:
                            first_error.append(text[:300].decode(errors="replace"))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    statuses[0] = statuses.get(0, 0) + 1
                    if not first_error:
                        first_error.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "first_error": first_error[0] if first_error else None,
    }


def status_sample(
    url: str, body: bytes, headers: dict[str, str], *, concurrency: int, total: int
) -> dict[str, object]:
    """Which statuses a target answers at this concurrency (run after wrk reported errors)."""
    return asyncio.run(_status_sample(url, body, headers, concurrency, total))
