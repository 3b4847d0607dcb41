"""The fleet dashboard in a real headless Chromium, against real processes: two router
replicas on a real redis-server and simulated nodes.

Chromium loads ``/dashboard``, runs its script (which polls ``/dashboard/api/state``) and
dumps the resulting DOM; the test reads the rendered tables. Chromium is a test
requirement (Debian: ``chromium``), not an optional extra: without it these tests fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from integration.procs import Cluster, Router, wait_until
from llm_router.auth import ManagedKey, Scope
from llm_router.security.managed_keys import ManagedKeyStore
from llm_router.state.keys import Keys

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # tests may run as root, where the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Chromium found: install Debian's 'chromium' package to run the dashboard tests")


class Rows(HTMLParser):
    """Collects the ``data-*`` attributes of table rows and the text of selected ids."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, str] = {}
        self.models: list[str] = []
        self.decision_cells: list[str] = []
        self.hidden: set[str] = set()
        #: Every chart's plotted values, by what it shows ("rps", "node-load:<id>", ...).
        self.charts: dict[str, list[list[float | None]]] = {}
        self._in_decisions = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-machine"):
            self.nodes[str(a["data-machine"])] = str(a.get("data-status"))
        if tag == "tr" and a.get("data-model"):
            self.models.append(str(a["data-model"]))
        if tag == "table" and a.get("id") == "decisions":
            self._in_decisions = True
        if "hidden" in a and a.get("id"):
            self.hidden.add(str(a["id"]))
        if tag == "svg" and a.get("data-values"):
            for attr, prefix in (("data-chart", ""), ("data-node-load", "node-load:")):
                if a.get(attr):
                    self.charts[prefix + str(a[attr])] = json.loads(str(a["data-values"]))
            if a.get("data-model-rps"):
                self.charts["model-rps:" + str(a["data-model-rps"])] = json.loads(
                    str(a["data-values"])
                )

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_decisions = False

    def handle_data(self, data: str) -> None:
        if self._in_decisions and data.strip():
            self.decision_cells.append(data.strip())


def browse(url: str, *, budget_ms: int = 2500, screenshot: Path | None = None) -> str:
    profile = tempfile.mkdtemp(prefix="llmr-chromium-")
    try:
        args = [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--window-size=1360,1100",
        ]
        args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        done = subprocess.run(
            [*args, url], capture_output=True, timeout=90, check=False, cwd=profile
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
        return done.stdout.decode()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def rendered(router: Router) -> Rows:
    dom = browse(f"{router.url}/dashboard")
    assert 'id="conn" class="pill pill-ok">live<' in dom, dom[:3000]
    rows = Rows()
    rows.feed(dom)
    return rows


@pytest.fixture(scope="module")
def fleet(redis_server: object) -> Iterator[Cluster]:
    url: str = redis_server.url  # type: ignore[attr-defined]
    cluster = Cluster(url)
    try:
        cluster.up(routers=2, access_log=True)
        yield cluster
    finally:
        print(cluster.logs())
        cluster.close()


def test_every_replica_shows_the_fleet_and_a_node_going_offline(
    fleet: Cluster, tmp_path: Path
) -> None:
    first, second = fleet.routers
    mac = fleet.start_node(["m-gguf", "m-mlx"], backend="metal", machine_name="mac-dash")
    cuda = fleet.start_node(["m-gguf"], backend="cuda", machine_name="cuda-dash", router=second)
    fleet.wait_online(mac)
    fleet.wait_online(cuda)
    sent = []
    for i, router in enumerate((first, second, first)):
        rid = f"dash-{i}"
        r = httpx.post(
            f"{router.api_base}/chat/completions",
            json={"model": "m-gguf", "max_tokens": 2},
            headers={"x-request-id": rid},
            timeout=10,
        )
        assert r.status_code == 200
        sent.append(rid)
    time.sleep(1.0)  # the replicas flush recent decisions to Redis every 0.5 s

    views = [rendered(first), rendered(second)]
    for view in views:
        assert view.nodes == {"mac-dash": "online", "cuda-dash": "online"}
        assert {"m-gguf", "m-mlx"} <= set(view.models)
        assert set(sent) <= set(view.decision_cells), view.decision_cells
        assert "login" in view.hidden and "main" not in view.hidden

    browse(f"{first.url}/dashboard", screenshot=tmp_path / "dash.png")
    png = (tmp_path / "dash.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000

    cuda.proc.kill()
    fleet.wait_status(cuda, "offline", timeout_s=10)
    after = rendered(second)
    assert after.nodes == {"mac-dash": "online", "cuda-dash": "offline"}


def test_access_log_lines_are_json(fleet: Cluster) -> None:
    router = fleet.routers[0]
    for i in range(3):
        httpx.post(
            f"{router.api_base}/chat/completions",
            json={"model": "m-gguf" if i else "missing-model"},
            headers={"x-request-id": f"log-{i}"},
            timeout=10,
        )

    def logged() -> list[dict[str, object]]:
        lines = router.proc.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith('{"ts"')]

    wait_until(
        lambda: {"log-0", "log-1", "log-2"} <= {e.get("request_id") for e in logged()},
        10,
        "access-log lines",
    )
    by_id = {e["request_id"]: e for e in logged()}
    assert by_id["log-0"]["status"] == 404 and by_id["log-0"]["outcome"] == "model_not_found"
    assert by_id["log-1"]["status"] == 200 and by_id["log-1"]["attempts"] == 1
    assert by_id["log-1"]["model"] == "m-gguf" and by_id["log-1"]["node"]


def test_a_locked_dashboard_asks_for_the_admin_key(fleet: Cluster) -> None:
    router = fleet.start_router(admin_keys="dash-admin-key", node_keys="dash-node-key")
    fleet.wait_ready(router)
    state = f"{router.url}/dashboard/api/state"
    assert httpx.get(state, timeout=5).status_code == 401
    ok = httpx.get(state, headers={"authorization": "Bearer dash-admin-key"}, timeout=5)
    assert ok.status_code == 200 and isinstance(ok.json()["nodes"], list)
    dom = browse(f"{router.url}/dashboard")
    view = Rows()
    view.feed(dom)
    assert "main" in view.hidden and "login" not in view.hidden
    assert view.nodes == {}


def _total(values: list[float | None]) -> float:
    return sum(v for v in values if v is not None)


def _history(router: Router) -> dict[str, object]:
    state = httpx.get(f"{router.url}/dashboard/api/state", timeout=5).json()
    history: dict[str, object] = state["history"]
    return history


def _same_on_both(first: Router, second: Router) -> tuple[Rows, Rows]:
    """Both replicas' rendered charts, read within one bucket (a new bucket shifts every
    series left by one, so a pair straddling a boundary is read again)."""
    for _ in range(3):
        views = rendered(first), rendered(second)
        if views[0].charts == views[1].charts:
            return views
    return views


def test_charts_move_with_traffic_and_are_the_same_on_every_replica(fleet: Cluster) -> None:
    first, second = fleet.routers[:2]  # the open replicas (a later one may be locked)
    slow = fleet.start_node(
        ["m-chart"],
        backend="cuda",
        machine_name="chart-dash",
        max_concurrency=2,
        ttft_ms=150,
        tokens_per_s=20,
    )
    node_id = fleet.wait_online(slow)

    before = rendered(first)
    assert {"rps", "errors", "latency", "ttft", "queue"} <= set(before.charts)
    assert len(before.charts["rps"][0]) == 90  # 15 minutes of 10-second buckets
    assert _total(before.charts[f"node-load:{node_id}"][0]) == 0
    assert _total(before.charts["model-rps:m-chart"][0]) == 0

    def stream(i: int) -> str:
        client = openai.OpenAI(base_url=(first, second)[i % 2].api_base, api_key="x", max_retries=0)
        text = ""
        for chunk in client.chat.completions.create(
            model="m-chart",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=40,
            stream=True,
        ):
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        return text

    # Six streams of about two seconds each on two slots, through both replicas: four
    # queue, for longer than the replicas' sampling period.
    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(stream, range(6)))

    # The charts end with the last closed 10-second bucket: the streams show within ~12 s.
    def counted() -> float:
        models: dict[str, dict[str, list[float | None]]] = _history(first)["models"]  # type: ignore[assignment]
        return _total(models.get("m-chart", {}).get("requests_per_s", []))

    wait_until(
        lambda: round(counted() * 10) == 6,
        30,
        "both replicas' counts in the shared history",
    )

    a, b = _same_on_both(first, second)
    assert a.charts == b.charts
    rps = a.charts["model-rps:m-chart"][0]
    assert round(_total(rps) * 10) == 6
    assert _total(a.charts["rps"][0]) > _total(before.charts["rps"][0])
    assert max(v or 0 for v in a.charts[f"node-load:{node_id}"][0]) == 100.0
    assert max(v or 0 for v in a.charts["ttft"][0]) >= 150  # p50 and p99 of the streams
    assert any(max(v or 0 for v in line) > 0 for line in a.charts["queue"])


class TenantRows(HTMLParser):
    """The tenant panel's rows as rendered: queue groups and in-flight tenants."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: dict[tuple[str, str, str], int] = {}
        self.in_flight: dict[str, tuple[int, int]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: str(v) for k, v in attrs}
        if tag == "tr" and "data-queue-model" in a:
            group = (a["data-queue-model"], a["data-band"], a["data-tenant"])
            self.queued[group] = int(a["data-waiting"])
        if tag == "tr" and "data-flight-tenant" in a:
            self.in_flight[a["data-flight-tenant"]] = (int(a["data-used"]), int(a["data-limit"]))


async def _tenant_keys(redis_url: str, prefix: str) -> dict[str, str]:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        store = ManagedKeyStore(redis, Keys(prefix))
        made = {}
        for label, queueing in [
            ("capped", ManagedKey(Scope.API, "", 0, tenant="capped", max_in_flight=3)),
            ("a", ManagedKey(Scope.API, "", 0, tenant="team-a", priority=5)),
            ("b", ManagedKey(Scope.API, "", 0, tenant="team-b", priority=7)),
        ]:
            made[label], _ = await store.create(Scope.API, name=label, queueing=queueing)
        return made
    finally:
        await redis.aclose()


def test_the_tenant_panel_shows_who_waits_and_who_runs_on_every_replica(
    redis_server: object,
) -> None:
    url: str = redis_server.url  # type: ignore[attr-defined]
    cluster = Cluster(url)
    key = asyncio.run(_tenant_keys(url, cluster.key_prefix))
    pool = ThreadPoolExecutor(8)
    try:
        first, second = cluster.up(routers=2, queue_timeout_s=120)
        # Two slots; a request of 40 tokens at 2 tokens/s holds one for about 20 s.
        node = cluster.start_node(["m-tenants"], max_concurrency=2, tokens_per_s=2, ttft_ms=5)
        cluster.wait_online(node)

        def send(router: Router, who: str) -> int:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.post(
                    f"{router.api_base}/chat/completions",
                    json={"model": "m-tenants", "max_tokens": 40},
                    headers={"authorization": f"Bearer {key[who]}"},
                    timeout=150,
                ).status_code
            return 0

        def state(router: Router) -> dict[str, Any]:
            body: dict[str, Any] = httpx.get(f"{router.url}/dashboard/api/state", timeout=5).json()
            return body

        def model_of(body: dict[str, Any]) -> dict[str, Any]:
            return next(m for m in body["models"] if m["id"] == "m-tenants")

        # The capped key holds both slots; team-a queues behind on one replica, team-b
        # (a higher band) on the other, and the capped key's third waits on the queue too.
        for router in (first, second):
            pool.submit(send, router, "capped")
        wait_until(
            lambda: sum(n["in_flight"] or 0 for n in state(first)["nodes"]) == 2, 20, "slots"
        )
        for router, who in [(first, "a"), (first, "a"), (first, "a"), (second, "b"), (second, "b")]:
            pool.submit(send, router, who)
        pool.submit(send, second, "capped")
        # Each replica's view is cached for a second: wait until both have read the six.
        for router in (first, second):
            wait_until(lambda r=router: model_of(state(r))["queue_depth"] == 6, 20, "six waiters")

        for router in (first, second):
            body = state(router)
            groups = {(g["band"], g["tenant"]): g for g in model_of(body)["queue_tenants"]}
            assert {k: g["waiting"] for k, g in groups.items()} == {
                (7, "team-b"): 2,
                (5, "team-a"): 3,
                (5, "capped"): 1,
            }, groups
            assert all(g["oldest_wait_s"] >= 0 for g in groups.values())
            assert [g["band"] for g in model_of(body)["queue_tenants"]] == [7, 5, 5]
            flight = {t["tenant"]: (t["used"], t["limit"]) for t in body["tenants_in_flight"]}
            assert flight == {"capped": (2, 3)}, body["tenants_in_flight"]

            page = TenantRows()
            page.feed(browse(f"{router.url}/dashboard"))
            assert page.queued == {
                ("m-tenants", "7", "team-b"): 2,
                ("m-tenants", "5", "team-a"): 3,
                ("m-tenants", "5", "capped"): 1,
            }
            assert page.in_flight == {"capped": (2, 3)}
    finally:
        cluster.close()  # ends the held requests: their threads return
        pool.shutdown(wait=True)
