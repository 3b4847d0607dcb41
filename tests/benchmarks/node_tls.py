"""What TLS on the node hop costs: the same fleet twice in one run, plain http and https.

Each fleet is one router replica and one simulated node (no think time) on one real
redis-server; the https fleet's router verifies the node against a CA made at start. Both
fleets carry the node secret (it is always on). wrk drives each router in turn, alternating
for ``ROUNDS`` rounds so that a busy machine weighs on both alike; the figures are medians
of the rounds and the https/http ratios. Run: python -m tests.benchmarks.node_tls
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from tests.benchmarks.loadgen import WrkResult, have_wrk, run_wrk, wrk_script
from tests.integration.certs import CertAuthority
from tests.integration.procs import Cluster, Router
from tests.redis_server import running_redis_server

MODEL = "bench-model"
ROUNDS = 5
DURATION_S = 4.0
CONCURRENCY = 16
_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _fleet(
    cluster: Cluster, scheme: str, router_flags: dict[str, object], node_flags: dict[str, object]
) -> Router:
    (router,) = cluster.up(1, **router_flags)
    node = cluster.start_node(
        [MODEL], ttft_ms=0, tokens_per_s=1_000_000, max_concurrency=256, **node_flags
    )
    cluster.wait_online(node)
    record = cluster.record_of(node)
    if record is None or record.get("scheme") != scheme:
        raise RuntimeError(f"the {scheme} fleet's node registered as {record!r}")
    return router


def _median(results: list[WrkResult], field: str) -> float:
    return statistics.median(float(getattr(r, field)) for r in results)


def main() -> int:
    if not have_wrk():
        print("wrk is not installed; nothing measured", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="llmr-bench-tls-"))
    ca = CertAuthority.create(work, "bench-ca")
    leaf = ca.issue(work, "bench-node")
    script = wrk_script(
        work / "chat.lua",
        method="POST",
        body=json.dumps(_BODY).encode(),
        headers={"Content-Type": "application/json"},
    )
    with running_redis_server() as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        plain_cluster, tls_cluster = Cluster(url), Cluster(url)
        try:
            fleets = {
                "http": _fleet(plain_cluster, "http", {}, {}),
                "https": _fleet(
                    tls_cluster,
                    "https",
                    {"node_ca_file": ca.cert},
                    {"tls_cert": leaf.cert, "tls_key": leaf.key},
                ),
            }
            results: dict[str, list[WrkResult]] = {name: [] for name in fleets}
            for _ in range(ROUNDS):
                for name, router in fleets.items():
                    results[name].append(
                        run_wrk(
                            f"{router.url}/v1/chat/completions",
                            script,
                            concurrency=CONCURRENCY,
                            duration_s=DURATION_S,
                            cpus=None,
                            threads=2,
                        )
                    )
        finally:
            plain_cluster.close()
            tls_cluster.close()
    print(f"node hop, {ROUNDS} alternating rounds of {DURATION_S:g} s, {CONCURRENCY} connections")
    for name, runs in results.items():
        errors = sum(r.errors for r in runs)
        print(
            f"  {name:<5} req/s median {_median(runs, 'rps'):8.0f}   p50 median "
            f"{_median(runs, 'p50_ms'):6.2f} ms   p99 median {_median(runs, 'p99_ms'):6.2f} ms"
            f"   errors {errors}"
        )
    rps = _median(results["https"], "rps") / max(_median(results["http"], "rps"), 1e-9)
    p50 = _median(results["https"], "p50_ms") / max(_median(results["http"], "p50_ms"), 1e-9)
    print(f"  https/http: req/s x{rps:.3f}, p50 x{p50:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
