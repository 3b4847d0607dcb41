"""The systems under test, each started in its own process(es) on loopback free ports.

Each ``start_*`` is a context manager yielding a ``Target`` and stopping everything it
started on exit, or raising ``Unavailable`` with a reason the report prints.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.benchmarks.procs import (
    Proc,
    ProcessStack,
    Unavailable,
    free_port,
    wait_http_ok,
    wait_port,
)
from tests.benchmarks.stores import STORES
from tests.benchmarks.upstream import MODEL

REPO = Path(__file__).resolve().parents[2]
AUTH_KEY = "sk-bench"
CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]}

UVICORN_FAST = [
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
]


@dataclass
class Settings:
    work_dir: Path
    server_cpus: str | None
    cache_dir: Path
    install_litellm: bool = True
    stream_chunks: int = 16
    stream_delay_ms: float = 0.0


@dataclass
class Target:
    name: str
    url: str
    cpu_procs: list[Proc]
    redis_port: int | None = None
    redis_proc: Proc | None = None
    notes: list[str] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.cpu_procs)


def start_upstream(stack: ProcessStack, cfg: Settings) -> tuple[Proc, int]:
    port = free_port()
    env = {
        "BENCH_STREAM_CHUNKS": str(cfg.stream_chunks),
        "BENCH_STREAM_DELAY_MS": str(cfg.stream_delay_ms),
    }
    proc = stack.start(
        "upstream",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.benchmarks.upstream:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *UVICORN_FAST,
        ],
        cpus=cfg.server_cpus,
        env=env,
        cwd=REPO,
    )
    wait_port(proc, port, 20)
    return proc, port


@contextlib.contextmanager
def start_direct(upstream: Proc, upstream_port: int) -> Iterator[Target]:
    yield Target("direct", f"http://127.0.0.1:{upstream_port}", [upstream])


def nginx_config(tmp: Path, listen: int, backends: list[int]) -> Path:
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in backends)
    user = "user root;\n" if os.geteuid() == 0 else ""
    text = f"""{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream backends {{
{servers}
    keepalive 512;
  }}
  server {{
    listen 127.0.0.1:{listen};
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
}}
"""
    path = tmp / "nginx.conf"
    path.write_text(text)
    return path


def _run_nginx(
    stack: ProcessStack, cfg: Settings, name: str, backends: list[int]
) -> tuple[Proc, int]:
    tmp = cfg.work_dir / name
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = nginx_config(tmp, port, backends)
    proc = stack.start(
        name, ["nginx", "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"], cpus=cfg.server_cpus
    )
    wait_port(proc, port, 10)
    return proc, port


@contextlib.contextmanager
def start_nginx(cfg: Settings, upstream_port: int) -> Iterator[Target]:
    with ProcessStack(cfg.work_dir / "logs") as stack:
        proc, port = _run_nginx(stack, cfg, "nginx", [upstream_port])
        yield Target("nginx", f"http://127.0.0.1:{port}", [proc])


@contextlib.contextmanager
def start_bare_proxy(cfg: Settings, upstream_port: int) -> Iterator[Target]:
    with ProcessStack(cfg.work_dir / "logs") as stack:
        port = free_port()
        proc = stack.start(
            "bare-proxy",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.benchmarks.bare_proxy:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *UVICORN_FAST,
            ],
            cpus=cfg.server_cpus,
            cwd=REPO,
            env={"BENCH_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}"},
        )
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(proc, f"{url}/v1/chat/completions", 20, json_body=CHAT_BODY)
        yield Target("bare-python", url, [proc])


# --- llm-router ---------------------------------------------------------------------------


def start_redis(stack: ProcessStack, cfg: Settings) -> tuple[Proc, int]:
    handle = STORES["plain"](stack, cfg.work_dir, cfg.server_cpus)
    return handle.proc, handle.probe_port


def router_command() -> list[str]:
    exe = Path(sys.executable).with_name("llm-router")
    if not exe.exists():
        raise Unavailable("the llm-router command is not installed in this environment")
    probe = subprocess.run(
        [str(exe), "serve", "--help"], capture_output=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        tail = (probe.stderr or probe.stdout).decode(errors="replace").strip().splitlines()[-1:]
        raise Unavailable(f"llm-router serve is not runnable yet ({' '.join(tail)[:160]})")
    return [str(exe), "serve"]


def _start_router(
    stack: ProcessStack, cfg: Settings, name: str, redis_url: str
) -> tuple[Proc, int]:
    port = free_port()
    proc = stack.start(
        name,
        [
            *router_command(),
            "--redis-url",
            redis_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--auth-disabled",
        ],
        cpus=cfg.server_cpus,
        cwd=REPO,
        env={"LLM_ROUTER_LOG_LEVEL": "warning"},
    )
    wait_http_ok(proc, f"http://127.0.0.1:{port}/healthz", 30)
    return proc, port


class Heartbeater:
    """Registers the upstream as a node and keeps it alive until stopped (one thread)."""

    def __init__(self, router_url: str, upstream_port: int, max_concurrency: int = 100_000):
        self.router_url = router_url
        self.registration = {
            "machine_name": "bench-upstream",
            "ip_address": "127.0.0.1",
            "runtime_port": upstream_port - 1,
            "node_api_port": upstream_port,
            "executable_models": [MODEL],
            "gpu_backend": "cpu",
            "max_concurrency": max_concurrency,
        }
        self.node_id = ""
        self._token = ""
        self.interval_s = 5.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self.errors: list[str] = []

    def register(self, client: httpx.Client) -> None:
        response = client.post(f"{self.router_url}/v0/nodes", json=self.registration)
        if response.status_code not in (200, 201):
            raise Unavailable(
                f"node registration failed: HTTP {response.status_code} {response.text[:200]}"
            )
        data = response.json()
        self.node_id, self._token = data["node_id"], data["node_token"]
        self.interval_s = float(data.get("heartbeat_interval_s", 5.0))

    def start(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            self.register(client)
        self._thread.start()

    def _loop(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.wait(self.interval_s):
                try:
                    response = client.post(
                        f"{self.router_url}/v0/health",
                        headers={"X-Node-Token": self._token},
                        json={"node_id": self.node_id, "executable_models": [MODEL]},
                    )
                    if response.status_code == 404:
                        self.register(client)
                    elif not response.is_success:
                        self.errors.append(f"heartbeat HTTP {response.status_code}")
                except (httpx.HTTPError, Unavailable) as exc:
                    self.errors.append(f"heartbeat: {exc}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


@contextlib.contextmanager
def start_router(
    cfg: Settings, upstream_port: int, replicas: int, store: str = "plain"
) -> Iterator[Target]:
    name = "llm-router" if replicas == 1 else f"llm-router x{replicas} + nginx"
    if store != "plain":
        name = f"{name} on {store}"
    with ProcessStack(cfg.work_dir / "logs") as stack:
        work = cfg.work_dir / f"store-{store}-{replicas}"
        work.mkdir(parents=True, exist_ok=True)
        redis_store = STORES[store](stack, work, cfg.server_cpus)
        redis_proc, redis_port = redis_store.proc, redis_store.probe_port
        routers = [
            _start_router(stack, cfg, f"router-{i}", redis_store.url) for i in range(replicas)
        ]
        procs = [p for p, _ in routers]
        if replicas == 1:
            url = f"http://127.0.0.1:{routers[0][1]}"
        else:
            lb, lb_port = _run_nginx(stack, cfg, "nginx-lb", [port for _, port in routers])
            procs.append(lb)
            url = f"http://127.0.0.1:{lb_port}"
        beat = Heartbeater(url, upstream_port)
        beat.start()
        try:
            wait_http_ok(procs[0], f"{url}/v1/chat/completions", 20, json_body=CHAT_BODY)
            yield Target(
                name, url, procs, redis_port=redis_port, redis_proc=redis_proc, notes=beat.errors
            )
        finally:
            beat.stop()


# --- LiteLLM ------------------------------------------------------------------------------

LITELLM_ENV = {
    "LITELLM_MASTER_KEY": AUTH_KEY,
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_SCHEMA_UPDATE": "True",
}


def litellm_executable(cfg: Settings) -> Path:
    venv = cfg.cache_dir / "litellm-venv"
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    if not cfg.install_litellm:
        raise Unavailable(f"LiteLLM is not installed in {venv} (run without --no-install)")
    print(f"installing LiteLLM into {venv} (once; may take minutes)...", flush=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, capture_output=True
        )
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
            check=True,
            timeout=900,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        last = detail.decode(errors="replace").strip().splitlines()[-1:] if detail else []
        raise Unavailable(f"LiteLLM install failed: {exc} {' '.join(last)[:160]}") from exc
    if not exe.exists():
        raise Unavailable("LiteLLM install finished without a litellm command")
    return exe


@contextlib.contextmanager
def start_litellm(cfg: Settings, upstream_port: int) -> Iterator[Target]:
    exe = litellm_executable(cfg)
    tmp = cfg.work_dir / "litellm"
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "config.yaml"
    conf.write_text(
        f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: none
litellm_settings:
  drop_params: true
  telemetry: false
general_settings:
  master_key: {AUTH_KEY}
"""
    )
    with ProcessStack(cfg.work_dir / "logs") as stack:
        port = free_port()
        proc = stack.start(
            "litellm",
            [
                str(exe),
                "--config",
                str(conf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
            cpus=cfg.server_cpus,
            cwd=tmp,
            env=LITELLM_ENV,
        )
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(
            proc,
            f"{url}/v1/chat/completions",
            180,
            json_body=CHAT_BODY,
            headers={"Authorization": f"Bearer {AUTH_KEY}"},
        )
        version = subprocess.run(
            [str(exe.with_name("pip")), "show", "litellm"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        notes = [line for line in version.stdout.splitlines() if line.startswith("Version:")]
        yield Target("litellm", url, [proc], notes=notes)
