"""``llm-router demo``: a router on the embedded store plus three simulated nodes.

Every part is a real process speaking the real protocol: the router (``serve``), and three
``sim-node`` agents (metal, cuda, cpu) that register and heartbeat over HTTP. The MLX model
is installed on the cuda node too, but only the metal node can execute it, so requests for
it always land on metal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

SHARED = ["llama-3.2-3b-instruct-q4_k_m.gguf", "nomic-embed-text-v1.5.gguf"]
MLX_ONLY = "mlx-community/Qwen2.5-7B-Instruct-4bit-mlx"
CUDA_ONLY = "Qwen2.5-7B-Instruct-AWQ"


@dataclass(frozen=True)
class DemoNode:
    name: str
    backend: str
    models: list[str]
    ttft_ms: int
    tokens_per_s: int


NODES = (
    DemoNode("mac-studio-1", "metal", [*SHARED, MLX_ONLY], 40, 60),
    DemoNode("rtx-box-1", "cuda", [*SHARED, CUDA_ONLY, MLX_ONLY], 20, 120),
    DemoNode("cpu-server-1", "cpu", SHARED[:1], 80, 15),
)


def _free_port_pair() -> int:
    """A port P such that P-1 is free too (the node agent's runtime sits on P-1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port < 1025:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port - 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "llm_router.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


@contextlib.contextmanager
def _children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def _wait_for(url: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"{what} exited early:\n{err[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up at {url}")


def _print_fleet(client: httpx.Client) -> None:
    nodes = client.get("/v0/nodes").json()
    print("\nNodes")
    print(f"  {'name':<14} {'backend':<8} {'status':<8} {'slots':<6} executable models")
    for node in sorted(nodes, key=lambda n: n["machine_name"]):
        print(
            f"  {node['machine_name']:<14} {node['gpu_backend']:<8} {node['status']:<8} "
            f"{node['max_concurrency']:<6} {', '.join(node['executable_models'])}"
        )
        hidden = sorted(set(node.get("models", [])) - set(node["executable_models"]))
        if hidden:
            print(
                f"  {'':<14} {'':<8} {'':<8} {'':<6} (installed, not executable: "
                f"{', '.join(hidden)})"
            )
    models = client.get("/v1/models").json()["data"]
    print("\nModels (GET /v1/models)")
    for model in models:
        print(
            f"  {model['id']:<46} nodes={model['node_count']}  "
            f"backends={','.join(model['backends'])}"
        )


def _print_examples(client: httpx.Client, names: dict[str, str]) -> None:
    print("\nExample requests")
    cases = [
        ("chat", SHARED[0]),
        ("chat", SHARED[0]),
        ("chat", SHARED[0]),
        ("chat", MLX_ONLY),
        ("chat", MLX_ONLY),
        ("chat", CUDA_ONLY),
        ("embeddings", SHARED[1]),
        ("chat", "no-such-model"),
    ]
    for kind, model in cases:
        if kind == "chat":
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "Hello!"}],
                "max_tokens": 8,
            }
            resp = client.post("/v1/chat/completions", json=body)
        else:
            resp = client.post("/v1/embeddings", json={"model": model, "input": "hello"})
        node = names.get(resp.headers.get("x-llm-router-node", ""), "-")
        if resp.status_code == 200 and kind == "chat":
            detail = resp.json()["choices"][0]["message"]["content"][:48]
        elif resp.status_code == 200:
            detail = f"{len(resp.json()['data'][0]['embedding'])}-dim vector"
        else:
            detail = resp.json()["error"]["code"]
        print(f"  {kind:<10} {model:<46} -> {resp.status_code} {node:<13} {detail}")


def _print_node_lock(node: dict[str, object]) -> None:
    """Show that a node serves its router only: a direct request has no node secret."""
    url = f"http://{node['ip_address']}:{node['node_api_port']}/v1/chat/completions"
    body = {"model": SHARED[0], "messages": [{"role": "user", "content": "Hello!"}]}
    resp = httpx.post(url, json=body, timeout=10)
    print(
        f"\nStraight to node {node['machine_name']}, without the router -> {resp.status_code} "
        "(a node serves its router only)"
    )


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(*, port: int = 8080, host: str = "127.0.0.1") -> int:
    # A backgrounded demo only gets SIGTERM: stop the children then too, as on Ctrl-C.
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER_")}
    router_url = f"http://{host}:{port}"
    with _children() as procs:
        router = _spawn(["serve", "--host", host, "--port", str(port)], env)
        procs.append(router)
        _wait_for(f"{router_url}/readyz", router, "router")
        for node in NODES:
            node_port = _free_port_pair()
            procs.append(
                _spawn(
                    [
                        "sim-node",
                        "--router-url",
                        router_url,
                        "--gpu-backend",
                        node.backend,
                        "--models",
                        ",".join(node.models),
                        "--machine-name",
                        node.name,
                        "--port",
                        str(node_port),
                        "--max-concurrency",
                        "2",
                        "--ttft-ms",
                        str(node.ttft_ms),
                        "--tokens-per-s",
                        str(node.tokens_per_s),
                        "--log-level",
                        "warning",
                    ],
                    env,
                )
            )
        client = httpx.Client(base_url=router_url, timeout=30)
        deadline = time.monotonic() + 30
        while len(client.get("/v0/nodes").json()) < len(NODES):
            if time.monotonic() > deadline:
                raise RuntimeError("the simulated nodes did not register in time")
            time.sleep(0.2)
        nodes = client.get("/v0/nodes").json()
        names = {n["id"]: n["machine_name"] for n in nodes}
        print(
            f"llm-router demo: router at {router_url} (embedded store), "
            f"{len(nodes)} simulated nodes"
        )
        _print_fleet(client)
        _print_examples(client, names)
        _print_node_lock(nodes[0])
        example = json.dumps({"model": SHARED[0], "messages": [{"role": "user", "content": "Hi"}]})
        print(
            f"""
Try it
  curl -s {router_url}/v1/models
  curl -s {router_url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{example}'
  curl -sN {router_url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{example[:-1]}, "stream": true}}'
  python -c "import openai; c = openai.OpenAI(base_url='{router_url}/v1', api_key='x'); \\
print(c.chat.completions.create(model='{MLX_ONLY}', \\
messages=[{{'role': 'user', 'content': 'Hi'}}]).choices[0].message.content)"
  curl -s {router_url}/v0/nodes          # the fleet, as every replica sees it

Serving until Ctrl-C.""",
            flush=True,
        )
        try:
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
            print("a demo process exited; stopping", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nstopping the demo fleet")
            return 0
