"""A fake router that records what a node agent sends it (BRIEF §3, just enough of it).

It registers (a new token and node secret each time), accepts heartbeats with the current
token, answers 404 once when told to forget the node, and accepts deletes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_router.asgi_util import Receive, Scope, Send, lifespan, read_body, send_json


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeRouter:
    interval_s: float = 0.1
    calls: list[Call] = field(default_factory=list)
    forget_next_heartbeat: bool = False
    tokens: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def of(self, method: str, path_prefix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(path_prefix)]

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 20) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), within_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send)
            return
        raw = await read_body(receive, 1 << 20)
        call = Call(
            scope["method"],
            scope["path"],
            {k.decode(): v.decode() for k, v in scope["headers"]},
            json.loads(raw) if raw else None,
        )
        status, reply = self._answer(call)
        await send_json(send, status, reply)
        async with self.changed:
            self.calls.append(call)
            self.changed.notify_all()

    def _answer(self, call: Call) -> tuple[int, Any]:
        if call.method == "POST" and call.path == "/v0/nodes":
            self.tokens += 1
            first = self.tokens == 1
            return (201 if first else 200), {
                "node_id": "node-1",
                "status": "registered" if first else "updated",
                "node_api_port": call.body["node_api_port"],
                "node_token": f"token-{self.tokens}",
                "node_secret": f"secret-{self.tokens}",
                "heartbeat_interval_s": self.interval_s,
            }
        if call.method == "POST" and call.path == "/v0/health":
            if self.forget_next_heartbeat:
                self.forget_next_heartbeat = False
                return 404, {"error": {"message": "unknown node", "code": "node_not_found"}}
            if call.headers.get("x-node-token") != f"token-{self.tokens}":
                return 401, {"error": {"message": "bad token"}}
            return 200, {"status": "ok"}
        if call.method == "DELETE" and call.path.startswith("/v0/nodes/"):
            return 200, {"status": "deleted"}
        return 404, {"error": {"message": "no route"}}
