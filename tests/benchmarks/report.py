"""Tables (markdown, printed and written), the results JSON and the PNG plot."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BASELINE = "bare-python"
PEER = "litellm"
#: The router on plain ``redis://``, which the rows on the other store kinds are held to.
PLAIN_ROUTER = "llm-router"
STORE_ROWS = ("llm-router-sentinel", "llm-router-cluster", "llm-router-tls")
#: Other routers and gateways, each in front of the same upstream; llm-router (one replica
#: on plain Redis) is set against each of them in a table of its own.
PEERS = ("litellm", "sglang-router", "vllm-router", "portkey")
DOC_BEGIN = "<!-- bench:begin -->"
DOC_END = "<!-- bench:end -->"


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ok(result: dict[str, Any]) -> bool:
    return result.get("status") == "ok"


def _wrk_at(result: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    for row in result.get("wrk", []):
        if row["concurrency"] == concurrency:
            return dict(row)
    return None


def _rps(results: dict[str, Any], name: str, concurrency: int) -> float | None:
    result = results.get(name)
    if not result or not _ok(result):
        return None
    row = _wrk_at(result, concurrency)
    return None if row is None else float(row["rps"])


def throughput_tables(results: dict[str, Any], levels: list[int]) -> str:
    targets = results["targets"]
    out = ["**Requests/s (non-streaming, wrk)**", ""]
    rows = []
    for name, res in targets.items():
        if not _ok(res):
            rows.append([name, *([res.get("status", "?")] + ["" for _ in levels[1:]])])
            continue
        cells = []
        for c in levels:
            row = _wrk_at(res, c)
            if row is None:
                cells.append("-")
                continue
            if not row["ok"]:
                cells.append("0 (none completed)")
                continue
            flag = f" ({row['errors']} err)" if row["errors"] else ""
            cells.append(_fmt(row["rps"]) + flag)
        rows.append([name, *cells])
    out.append(_table(["target", *[f"c{c}" for c in levels]], rows))

    out += ["", "**Latency p50 / p99 (ms)**", ""]
    rows = []
    for name, res in targets.items():
        if not _ok(res):
            continue
        cells = []
        for c in levels:
            row = _wrk_at(res, c)
            if row is None or not row["ok"]:
                cells.append("-")
                continue
            cells.append(f"{_fmt(row['p50_ms'])} / {_fmt(row['p99_ms'])}")
        rows.append([name, *cells])
    out.append(_table(["target", *[f"c{c}" for c in levels]], rows))

    out += ["", f"**Ratios (throughput vs `{BASELINE}` and vs `{PEER}`; CPU per request)**", ""]
    rows = []
    for name, res in targets.items():
        if not _ok(res):
            continue
        cells = []
        for c in levels:
            mine, base, peer = (
                _rps(targets, name, c),
                _rps(targets, BASELINE, c),
                _rps(targets, PEER, c),
            )
            vs_base = f"{mine / base:.2f}x" if mine and base else "-"
            vs_peer = f"{mine / peer:.1f}x" if mine and peer else "-"
            cells.append(f"{vs_base} / {vs_peer}")
        c16 = _wrk_at(res, 16) or {}
        cells.append(_fmt(c16.get("cpu_us_per_req"), 0))
        rows.append([name, *cells])
    out.append(
        _table(
            ["target", *[f"c{c} vs bare / vs LiteLLM" for c in levels], "proxy CPU µs/req (c16)"],
            rows,
        )
    )
    base_c1 = _wrk_at(targets.get(BASELINE, {}), 1) if _ok(targets.get(BASELINE, {})) else None
    if base_c1:
        out += ["", f"**Added latency at c1 over `{BASELINE}` (ms)**", ""]
        rows = []
        for name, res in targets.items():
            mine_c1 = _wrk_at(res, 1) if _ok(res) else None
            if mine_c1 is None or name == BASELINE:
                continue
            rows.append(
                [
                    name,
                    f"{mine_c1['p50_ms'] - base_c1['p50_ms']:+.3f}",
                    f"{mine_c1['p99_ms'] - base_c1['p99_ms']:+.3f}",
                ]
            )
        out.append(_table(["target", "p50 added", "p99 added"], rows))
    errors = [
        f"- `{name}` at c{row['concurrency']}: {row['errors']} errors; a sample of "
        f"{sum(row['error_sample']['statuses'].values())} requests got statuses "
        f"{row['error_sample']['statuses']}, first error: `{row['error_sample']['first_error']}`"
        for name, res in targets.items()
        if _ok(res)
        for row in res.get("wrk", [])
        if row.get("error_sample")
    ]
    if errors:
        out += ["", "**Errors seen under load** (status 0 = connection error or timeout)", ""]
        out += errors
    return "\n".join(out)


def peers_table(results: dict[str, Any], levels: list[int]) -> str:
    """Where one llm-router replica stands against each peer: throughput ratio per level
    (>1: we serve more), and per core (CPU per request) and tail latency side by side."""
    targets = results["targets"]
    ours = targets.get(PLAIN_ROUTER, {})
    if not _ok(ours):
        return ""
    ours16 = _wrk_at(ours, 16) or {}
    rows = []
    for peer in PEERS:
        res = targets.get(peer)
        if res is None:
            continue
        if not _ok(res):
            rows.append([peer, res.get("status", "?"), *["" for _ in levels], "", ""])
            continue
        ratios = []
        for c in levels:
            mine, theirs = _rps(targets, PLAIN_ROUTER, c), _rps(targets, peer, c)
            ratios.append(f"{mine / theirs:.2f}x" if mine and theirs else "-")
        theirs16 = _wrk_at(res, 16) or {}
        cpu = (
            f"{_fmt(ours16.get('cpu_us_per_req'), 0)} vs {_fmt(theirs16.get('cpu_us_per_req'), 0)}"
        )
        p99 = f"{_fmt(ours16.get('p99_ms'))} vs {_fmt(theirs16.get('p99_ms'))}"
        version = ", ".join(str(n) for n in res.get("notes", []) if n) or "-"
        rows.append([peer, version, *ratios, cpu, p99])
    if not rows:
        return ""
    header = [
        "peer",
        "version",
        *[f"c{c} llm-router / peer" for c in levels],
        "CPU µs/req c16 (ours vs peer)",
        "p99 ms c16 (ours vs peer)",
    ]
    return "**llm-router (one replica) against each peer**\n\n" + _table(header, rows)


#: ``serve --workers 1`` and ``--workers 2``, measured in alternating rounds of one run.
WORKER_ROWS = ("llm-router-w1", "llm-router-w2")


def workers_table(results: dict[str, Any], levels: list[int]) -> str:
    """``--workers 2`` against ``--workers 1`` per level: throughput ratio, tails, CPU."""
    targets = results["targets"]
    one, two = (targets.get(name, {}) for name in WORKER_ROWS)
    if not (_ok(one) and _ok(two)):
        return ""
    rows = []
    for c in levels:
        a, b = _wrk_at(one, c), _wrk_at(two, c)
        if a is None or b is None:
            continue
        ratio = f"{b['rps'] / a['rps']:.2f}x" if a["rps"] else "-"
        rows.append(
            [
                f"c{c}",
                _fmt(a["rps"]),
                _fmt(b["rps"]),
                ratio,
                f"{_fmt(a['p50_ms'])} / {_fmt(a['p99_ms'])}",
                f"{_fmt(b['p50_ms'])} / {_fmt(b['p99_ms'])}",
                f"{_fmt(a.get('cpu_us_per_req'), 0)} / {_fmt(b.get('cpu_us_per_req'), 0)}",
            ]
        )
    header = [
        "level",
        "w1 req/s",
        "w2 req/s",
        "w2 / w1",
        "w1 p50 / p99 ms",
        "w2 p50 / p99 ms",
        "CPU µs/req w1 / w2",
    ]
    notes = ", ".join(str(n) for n in one.get("notes", [])[1:] if n)
    title = f"**`serve --workers 2` against `--workers 1`** ({notes})"
    return title + "\n\n" + _table(header, rows)


def stream_table(results: dict[str, Any]) -> str:
    rows = []
    for name, res in results["targets"].items():
        if not _ok(res):
            continue
        if res.get("stream_status"):
            rows.append([name, "-", "-", "-", "-", res["stream_status"]])
            continue
        for row in res.get("stream", []):
            rows.append(
                [
                    name,
                    f"c{row['concurrency']}",
                    str(row["requests"]),
                    f"{_fmt(row['ttfb_p50_ms'])} / {_fmt(row['ttfb_p99_ms'])}",
                    f"{_fmt(row['total_p50_ms'])} / {_fmt(row['total_p99_ms'])}",
                    str(row["errors"]),
                ]
            )
    if not rows:
        return ""
    header = ["target", "conc.", "requests", "TTFB p50 / p99 ms", "total p50 / p99 ms", "errors"]
    return "**Streaming (SSE, aiohttp client)**\n\n" + _table(header, rows)


def redis_table(results: dict[str, Any]) -> str:
    rows = []
    for name, res in results["targets"].items():
        if not _ok(res) or "redis" not in res:
            continue
        redis = res["redis"]
        top = ", ".join(f"{cmd} {n:.2f}" for cmd, n in redis.get("top_commands", [])[:6])
        rows.append(
            [
                name,
                _fmt(redis.get("client_commands_per_request")),
                _fmt(redis.get("commands_per_request")),
                _fmt(redis.get("redis_cpu_us_per_req"), 0),
                _fmt(res.get("heartbeats_per_s")),
                top,
            ]
        )
    if not rows:
        return ""
    header = [
        "target",
        "client cmds/req (≈ round trips)",
        "all cmds/req (incl. inside scripts)",
        "Redis CPU µs/req",
        "heartbeats/s (HTTP, c16)",
        "commands per request",
    ]
    return "**Redis per proxied request (c16 run)**\n\n" + _table(header, rows)


def _ratio(mine: float | None, base: float | None, digits: int = 2) -> str:
    return f"{mine / base:.{digits}f}x" if mine and base else "-"


def store_table(results: dict[str, Any]) -> str:
    """The router on each store kind against the same router on plain ``redis://``."""
    targets = results["targets"]
    plain = targets.get(PLAIN_ROUTER, {})
    if not _ok(plain):
        return ""
    levels = results["config"]["concurrency"]
    rows = []
    for name in (PLAIN_ROUTER, *STORE_ROWS):
        res = targets.get(name)
        if not res or not _ok(res):
            continue
        c16, base16 = _wrk_at(res, 16) or {}, _wrk_at(plain, 16) or {}
        rows.append(
            [
                name,
                *(_ratio(_rps(targets, name, c), _rps(targets, PLAIN_ROUTER, c)) for c in levels),
                f"{_fmt(c16.get('p50_ms'))} / {_fmt(c16.get('p99_ms'))}",
                f"{_fmt(c16.get('cpu_us_per_req'), 0)} "
                f"({_ratio(c16.get('cpu_us_per_req'), base16.get('cpu_us_per_req'))})",
                _fmt(res.get("redis", {}).get("client_commands_per_request")),
            ]
        )
    if len(rows) < 2:
        return ""
    header = [
        "target",
        *(f"req/s c{c} vs plain" for c in levels),
        "c16 p50 / p99 ms",
        "proxy CPU µs/req c16 (vs plain)",
        "round trips/req",
    ]
    return "**Store kinds (same router, same run; vs plain `redis://`)**\n\n" + _table(header, rows)


def micro_tables(micro: dict[str, Any]) -> str:
    if not micro or "selection" not in micro:
        return f"Micro-benchmarks: {micro.get('status', 'not run') if micro else 'not run'}"
    rows = []
    for row in micro["selection"]:
        acq, rel, scan = row["acquire"], row["release"], row["naive_scan"]
        rows.append(
            [
                f"{row['nodes']:,}",
                _fmt(acq["server_us"], 1),
                f"{_fmt(acq['client_p50_us'], 0)} / {_fmt(acq['client_p99_us'], 0)}",
                _fmt(rel["server_us"], 1),
                _fmt(scan["server_us"], 1),
                _fmt(1e6 / acq["server_us"] if acq["server_us"] else None, 0),
            ]
        )
    header = [
        "capable nodes",
        "acquire server µs",
        "acquire client p50 / p99 µs",
        "release server µs",
        "naive scan server µs",
        "fleet-wide picks/s cap",
    ]
    out = ["**Selection + lease (real scripts, real Redis)**", "", _table(header, rows)]
    affinity = micro.get("affinity")
    if affinity:
        header = ["affinity", "nodes", "acquire server µs", "round trips", "Redis commands"]
        rows = [
            [
                r["affinity"],
                f"{r['nodes']:,}",
                _fmt(r["server_us"], 1),
                _fmt(r["round_trips"], 0),
                _fmt(r["commands"], 1),
            ]
            for r in affinity
        ]
        out += ["", "**Acquire with affinity (three keys per request)**", "", _table(header, rows)]
    hb, mem = micro.get("heartbeat"), micro.get("memory")
    if hb:
        out += [
            "",
            f"Heartbeat script ({hb['models_per_node']} models, {hb['nodes']:,} nodes): "
            f"{_fmt(hb['server_us'], 1)} µs server per call (≈ "
            f"{_fmt(1e6 / hb['server_us'] if hb['server_us'] else None, 0)} heartbeats/s "
            f"fleet-wide Redis budget), client p50 {_fmt(hb['client_p50_us'], 0)} µs.",
        ]
    if mem:
        out += [
            "",
            f"Redis memory: {_fmt(mem['bytes_per_node'], 0)} bytes per node with "
            f"{mem['models_per_node']} models ({mem['nodes']:,} nodes, models drawn from a pool "
            f"of {mem['model_pool']}); the node hash alone is {mem['node_hash_bytes']:,} bytes.",
        ]
    return "\n".join(out)


def machine_block(results: dict[str, Any]) -> str:
    m = results["machine"]
    cfg = results["config"]
    return (
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['kernel']}; Python {m['python']}, "
        f"{m['redis']}, {m['nginx']}, {m['wrk']}.  \n"
        f"Load generator pinned to CPU {cfg['load_cpus']}, servers to CPU {cfg['server_cpus']}; "
        f"{cfg['duration_s']} s per point, {cfg['rounds']} round(s) (median), "
        f"run {results['started']} ({cfg['mode']})."
    )


def markdown(results: dict[str, Any]) -> str:
    levels = results["config"]["concurrency"]
    parts = [
        machine_block(results),
        throughput_tables(results, levels),
        peers_table(results, levels),
        workers_table(results, levels),
        stream_table(results),
        redis_table(results),
        store_table(results),
        micro_tables(results.get("micro", {})),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Write the PNG; returns a reason when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed; skipping the plot"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, res in results["targets"].items():
        if not _ok(res) or not res.get("wrk"):
            continue
        done = [r for r in res["wrk"] if r["ok"]]
        conc = [r["concurrency"] for r in done]
        ax1.plot(conc, [r["rps"] for r in done], marker="o", label=name)
        ax2.plot(conc, [r["p50_ms"] for r in done], marker="o", label=name)
    for ax, title, unit in ((ax1, "Throughput", "requests/s"), (ax2, "Latency p50", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle("Chat completions through each proxy, same upstream")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path, Path | None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["started"].replace(":", "").replace("-", "")
    json_path = out_dir / f"results-{stamp}.json"
    text = json.dumps(results, indent=2, default=str)
    json_path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    md_path = out_dir / "latest.md"
    md_path.write_text(markdown(results))
    png = out_dir / "throughput.png"
    reason = plot(results, png)
    if reason:
        print(reason)
        return json_path, md_path, None
    return json_path, md_path, png


def update_docs(doc: Path, tables: str) -> bool:
    """Replace the block between the markers in the doc; False when the markers are absent."""
    if not doc.exists():
        return False
    text = doc.read_text()
    start, end = text.find(DOC_BEGIN), text.find(DOC_END)
    if start < 0 or end < start:
        return False
    doc.write_text(text[: start + len(DOC_BEGIN)] + "\n\n" + tables + "\n" + text[end:])
    return True
