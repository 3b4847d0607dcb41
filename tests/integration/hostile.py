"""A hostile node: an HTTP server written on raw asyncio streams, so a test decides every
byte it sends (redirects, huge or trickling bodies, foreign content types, hop-by-hop and
cross-origin headers, 500s). It registers with a real router like any node and keeps
itself alive with heartbeats; ``hits`` counts the requests it received, per path.

The server runs on its own event loop in a thread of the test process; the router under
test is a real process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from integration.procs import LOOPBACK


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Behaviour = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


def head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> None:
    fields = [("Content-Type", content_type), ("Content-Length", str(len(body))), *(headers or [])]
    writer.write(head(status, fields) + body)
    await writer.drain()


def completion(model: str, text: str = "hostile says hi") -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-hostile",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


def model_of(request: Request) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        model = json.loads(request.body).get("model")
        if isinstance(model, str):
            return model
    return "unknown"


async def serve_ok(request: Request, writer: asyncio.StreamWriter) -> None:
    await respond(writer, 200, completion(model_of(request)))


async def fail_500(_request: Request, writer: asyncio.StreamWriter) -> None:
    await respond(writer, 500, b'{"error": {"message": "runtime crashed"}}')


class HostileNode:
    def __init__(self, behaviour: Behaviour, *, machine_name: str | None = None) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.machine_name = machine_name or f"hostile-{self.port}"
        self.hits: Counter[str] = Counter()
        self.node_id = ""
        self.token = ""
        self._loop = asyncio.new_event_loop()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        ready = threading.Event()
        self._threads.append(threading.Thread(target=self._run, args=(ready,), daemon=True))
        self._threads[0].start()
        ready.wait(5)

    # --- the server -------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._connection, sock=self.sock)
            ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while not writer.is_closing():
                request = await self._read(reader)
                if request is None:
                    break
                self.hits[request.path] += 1
                await self.behaviour(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Request | None:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = raw.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return Request(method, path, headers, body)

    # --- as a node of a fleet ---------------------------------------------------------------

    def register(
        self, router_url: str, models: list[str] | None, *, keep_alive_s: float = 0.4, **fields: Any
    ) -> httpx.Response:
        """Register (``models`` None: let the router ask ``/v1/models``) and heartbeat."""
        body: dict[str, Any] = {
            "machine_name": self.machine_name,
            "ip_address": LOOPBACK,
            "runtime_port": self.port - 1,
            "node_api_port": self.port,
            "gpu_backend": "cuda",
            **fields,
        }
        if models is not None:
            body["executable_models"] = models
        response = httpx.post(f"{router_url}/v0/nodes", json=body, timeout=30)
        if response.status_code in (200, 201):
            self.node_id = response.json()["node_id"]
            self.token = response.json()["node_token"]
            beat = {"cpu_usage": 0, "memory_usage": 0, "active_requests": 0, **fields}
            self._keep_alive(router_url, keep_alive_s, beat)
        return response

    def _keep_alive(self, router_url: str, interval_s: float, fields: dict[str, Any]) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                with contextlib.suppress(httpx.HTTPError):
                    httpx.post(
                        f"{router_url}/v0/health",
                        json={"node_id": self.node_id, **fields},
                        headers={"X-Node-Token": self.token},
                        timeout=2,
                    )

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()

        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            self._loop.call_later(0.1, self._loop.stop)

        self._loop.call_soon_threadsafe(shutdown)
        for thread in self._threads:
            thread.join(timeout=5)
        self.sock.close()


@contextlib.contextmanager
def hostile_node(behaviour: Behaviour, **kw: Any) -> Iterator[HostileNode]:
    node = HostileNode(behaviour, **kw)
    try:
        yield node
    finally:
        node.close()
