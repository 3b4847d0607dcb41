"""The systems under test, each started in its own process(es) on loopback free ports.

Each ``start_*`` is a context manager yielding a ``Target`` and stopping everything it
started on exit, or raising ``Unavailable`` with a reason the report prints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
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
    install_peers: bool = True
    stream_chunks: int = 16
    stream_delay_ms: float = 0.0
    #: Every CPU the run may use (load and servers): the ``--workers`` comparison spreads
    #: the router over all of them.
    all_cpus: str | None = None


@dataclass
class Target:
    name: str
    url: str
    cpu_procs: list[Proc]
    redis_port: int | None = None
    redis_proc: Proc | None = None
    notes: list[str] = field(default_factory=list)
    #: Sent with every request (a gateway told per request where the upstream is).
    headers: dict[str, str] = field(default_factory=dict)
    #: Why the streaming client is not run against this target, when it is not.
    stream_unsupported: str | None = None

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
    stack: ProcessStack,
    cfg: Settings,
    name: str,
    redis_url: str,
    workers: int = 1,
    cpus: str | None = None,
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
            "--workers",
            str(workers),
        ],
        cpus=cpus or cfg.server_cpus,
        cwd=REPO,
        env={"LLM_ROUTER_LOG_LEVEL": "warning"},
    )
    wait_http_ok(proc, f"http://127.0.0.1:{port}/healthz", 60)
    return proc, port


class Heartbeater:
    """Registers the upstream as a node and keeps it alive until stopped (one thread)."""

    def __init__(
        self,
        router_url: str,
        upstream_port: int,
        max_concurrency: int = 100_000,
        *,
        model: str = MODEL,
        machine_name: str = "bench-upstream",
    ):
        self.router_url = router_url
        self.model = model
        self.registration = {
            "machine_name": machine_name,
            "ip_address": "127.0.0.1",
            "runtime_port": upstream_port - 1,
            "node_api_port": upstream_port,
            "executable_models": [model],
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
                        json={"node_id": self.node_id, "executable_models": [self.model]},
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


@contextlib.contextmanager
def start_worker_pair(cfg: Settings, upstream_port: int) -> Iterator[tuple[Target, Target]]:
    """``serve --workers 1`` and ``serve --workers 2`` up at once on one Redis, both free to
    use every CPU of the run, so that their rounds can alternate (the idle one costs next
    to nothing). Leases are shared, the node has room for both."""
    with ProcessStack(cfg.work_dir / "logs") as stack:
        work = cfg.work_dir / "store-workers"
        work.mkdir(parents=True, exist_ok=True)
        redis_store = STORES["plain"](stack, work, cfg.server_cpus)
        cpus = cfg.all_cpus or cfg.server_cpus
        targets = []
        for workers in (1, 2):
            proc, port = _start_router(
                stack, cfg, f"router-w{workers}", redis_store.url, workers, cpus
            )
            targets.append(
                Target(
                    f"llm-router-w{workers}",
                    f"http://127.0.0.1:{port}",
                    [proc],
                    redis_port=redis_store.probe_port,
                    redis_proc=redis_store.proc,
                    notes=[f"--workers {workers}", f"router on CPUs {cpus}"],
                )
            )
        beat = Heartbeater(targets[0].url, upstream_port)
        beat.start()
        try:
            for target in targets:
                wait_http_ok(
                    target.cpu_procs[0],
                    f"{target.url}/v1/chat/completions",
                    20,
                    json_body=CHAT_BODY,
                )
            yield targets[0], targets[1]
        finally:
            beat.stop()


# --- peers: LiteLLM, the Rust routers, the Portkey gateway -----------------------------------

# Pinned: a figure is only comparable with the version it was measured on.
LITELLM = "litellm[proxy]==1.79.3"
SGLANG_ROUTER = "sglang-router==0.3.2"
VLLM_ROUTER = "vllm-router==0.1.17"
PORTKEY = "@portkey-ai/gateway@1.15.2"

LITELLM_ENV = {
    "LITELLM_MASTER_KEY": AUTH_KEY,
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_SCHEMA_UPDATE": "True",
}


def _install_failed(what: str, exc: BaseException) -> Unavailable:
    detail = getattr(exc, "stderr", b"") or b""
    if isinstance(detail, bytes):
        detail = detail.decode(errors="replace")
    last = detail.strip().splitlines()[-1:] if detail else []
    return Unavailable(f"{what} install failed: {exc} {' '.join(last)[:160]}")


def venv_executable(cfg: Settings, requirement: str, command: str) -> Path:
    """``command`` from ``requirement``, installed on first use into a venv of its own
    under the cache directory (named after the pinned requirement, so a new pin is a new
    venv), never into the project's environment."""
    slug = requirement.replace("[", "-").replace("]", "").replace("==", "-")
    venv = cfg.cache_dir / f"{slug}-venv"
    exe = venv / "bin" / command
    if exe.exists():
        return exe
    if not cfg.install_peers:
        raise Unavailable(f"{requirement} is not installed in {venv} (run without --no-install)")
    print(f"installing {requirement} into {venv} (once; may take minutes)...", flush=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, capture_output=True
        )
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", requirement],
            check=True,
            timeout=900,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        raise _install_failed(requirement, exc) from exc
    if not exe.exists():
        raise Unavailable(f"{requirement} installed without a {command} command")
    return exe


def litellm_executable(cfg: Settings) -> Path:
    return venv_executable(cfg, LITELLM, "litellm")


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
        yield Target("litellm", url, [proc], notes=_pip_version(exe, "litellm"))


def _pip_version(exe: Path, package: str) -> list[str]:
    shown = subprocess.run(
        [str(exe.with_name("pip")), "show", package],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return [
        f"{package} {line.split(':', 1)[1].strip()}"
        for line in shown.stdout.splitlines()
        if line.startswith("Version:")
    ]


@contextlib.contextmanager
def _rust_router(
    cfg: Settings, name: str, requirement: str, command: str, argv: list[str], upstream_port: int
) -> Iterator[Target]:
    """sglang-router and vllm-router: one static worker (our upstream), their default
    policy; their Prometheus listener gets a free port so two can never collide."""
    exe = venv_executable(cfg, requirement, command)
    with ProcessStack(cfg.work_dir / "logs") as stack:
        port = free_port()
        proc = stack.start(
            name,
            [
                str(exe),
                *argv,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--worker-urls",
                f"http://127.0.0.1:{upstream_port}",
                "--prometheus-host",
                "127.0.0.1",
                "--prometheus-port",
                str(free_port()),
            ],
            cpus=cfg.server_cpus,
            cwd=cfg.work_dir,
        )
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(proc, f"{url}/v1/chat/completions", 60, json_body=CHAT_BODY)
        yield Target(name, url, [proc], notes=_pip_version(exe, requirement.split("==")[0]))


@contextlib.contextmanager
def start_sglang_router(cfg: Settings, upstream_port: int) -> Iterator[Target]:
    with _rust_router(
        cfg,
        "sglang-router",
        SGLANG_ROUTER,
        "sglang-router",
        ["launch", "--log-level", "warn"],
        upstream_port,
    ) as target:
        yield target


@contextlib.contextmanager
def start_vllm_router(cfg: Settings, upstream_port: int) -> Iterator[Target]:
    with _rust_router(
        cfg, "vllm-router", VLLM_ROUTER, "vllm-router", ["--log-level", "warning"], upstream_port
    ) as target:
        yield target


def portkey_script(cfg: Settings) -> Path:
    """The gateway's server script, installed on first use with npm into its own prefix."""
    prefix = cfg.cache_dir / PORTKEY.lstrip("@").replace("/", "-").replace("@", "-")
    script = prefix / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if script.exists():
        return script
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise Unavailable("Node.js and npm are not installed (apt-get install nodejs npm)")
    if not cfg.install_peers:
        raise Unavailable(f"{PORTKEY} is not installed in {prefix} (run without --no-install)")
    print(f"installing {PORTKEY} into {prefix} (once)...", flush=True)
    prefix.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), PORTKEY],
            check=True,
            timeout=900,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        raise _install_failed(PORTKEY, exc) from exc
    if not script.exists():
        raise Unavailable(f"{PORTKEY} installed without {script.name}")
    return script


#: The gateway is told per request where to go: an OpenAI-compatible custom host.
def portkey_headers(upstream_port: int) -> dict[str, str]:
    return {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"http://127.0.0.1:{upstream_port}/v1",
    }


#: Measured with 1.15.2 on Node 20: a streamed reply from an OpenAI-compatible host fails
#: in the gateway itself ("TypeError: immutable" appending its headers to the upstream's
#: response), answering {"status":"failure"}; non-streaming requests work.
PORTKEY_STREAM_BROKEN = (
    "streaming fails inside the gateway (TypeError: immutable, adding headers to the "
    "upstream response on Node): measured non-streaming only"
)


@contextlib.contextmanager
def start_portkey(cfg: Settings, upstream_port: int) -> Iterator[Target]:
    script = portkey_script(cfg)
    with ProcessStack(cfg.work_dir / "logs") as stack:
        port = free_port()
        proc = stack.start(
            "portkey",
            ["node", str(script), f"--port={port}", "--headless"],
            cpus=cfg.server_cpus,
            cwd=cfg.work_dir,
        )
        url = f"http://127.0.0.1:{port}"
        headers = portkey_headers(upstream_port)
        wait_http_ok(proc, f"{url}/v1/chat/completions", 60, json_body=CHAT_BODY, headers=headers)
        yield Target(
            "portkey",
            url,
            [proc],
            notes=[PORTKEY.rsplit("@", 1)[1]],
            headers=headers,
            stream_unsupported=PORTKEY_STREAM_BROKEN,
        )
