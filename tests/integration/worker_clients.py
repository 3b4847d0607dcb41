"""Clients of a ``serve --workers 2`` router sorted by the worker their connection is on.

The kernel hands each new connection to whichever worker accepts it first, so a test
cannot choose a worker for a request. It can choose a *connection*: each client here holds
one keep-alive connection, and the fleet's decision list in Redis (which names the replica,
``host:port/wN``, of every request) says which worker that connection landed on.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field

import httpx
import redis.asyncio as aioredis

from integration.probes import chat_body
from integration.procs import Router

#: The model of a wide node (16 slots) the sorting requests go to.
WIDE = "w-wide"
WIDE_TOKENS_PER_S = 200
#: Idle connections must outlive a test's pauses, or a client would silently reconnect
#: (perhaps to the other worker).
WORKER_FLAGS = {"workers": 2, "keep_alive_timeout_s": 120, "log_level": "info"}
WORKER_LINE = re.compile(r"worker (\d+): pid (\d+), replica (\S+), serving")
#: Two workers importing at once on a busy machine start slower than one replica.
START_S = 90.0


def workers_of(router: Router) -> dict[str, int]:
    """replica name → pid of the worker serving under it (a restart replaces the pid), for
    the workers that have finished starting up."""
    found: dict[str, int] = {}
    for _index, pid, replica in WORKER_LINE.findall(router.proc.log_path.read_text()):
        found[replica] = int(pid)
    return found


def pinned_client() -> httpx.AsyncClient:
    # httpx drops a connection idle for ``keepalive_expiry`` (5 s by default) and opens a
    # new one on the next request, which may land on the other worker; sorting and a
    # test's pauses can take longer than that on a busy machine.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=120)
    return httpx.AsyncClient(timeout=30, limits=limits)


@dataclass
class Workers:
    """Clients sorted by the worker their one connection is on."""

    router: Router
    decisions: aioredis.Redis
    decisions_key: str
    clients: dict[str, list[httpx.AsyncClient]] = field(default_factory=dict)
    _all: list[httpx.AsyncClient] = field(default_factory=list)

    async def replica_of(self, request_ids: list[str]) -> dict[str, str]:
        """request id → replica, from the decision list (replicas flush it twice a second)."""
        deadline = time.monotonic() + 10
        while True:
            raw = await self.decisions.lrange(self.decisions_key, 0, -1)
            seen = {e["request_id"]: e["replica"] for e in map(json.loads, raw)}
            if all(r in seen for r in request_ids) or time.monotonic() > deadline:
                return {r: seen[r] for r in request_ids if r in seen}
            await asyncio.sleep(0.1)

    def _sorted(self, per_worker: int) -> bool:
        return len(self.clients) == 2 and all(len(c) >= per_worker for c in self.clients.values())

    async def sort(self, per_worker: int) -> None:
        """Open connections until each of the two workers holds ``per_worker`` of them.

        The workers share one listening socket and the kernel tends to wake the worker that
        waited last, so on a lightly loaded router many connections in a row can land on
        the same worker: keep opening them, for a while rather than a fixed number of times.
        """
        deadline = time.monotonic() + 60
        while not self._sorted(per_worker):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"connections never reached both workers: {list(self.clients)}"
                )
            batch = [pinned_client() for _ in range(per_worker * 2)]
            self._all += batch
            answers = await asyncio.gather(
                *(
                    c.post(f"{self.router.api_base}/chat/completions", json=chat_body(WIDE))
                    for c in batch
                )
            )
            assert [a.status_code for a in answers] == [200] * len(batch)
            ids = [a.headers["x-request-id"] for a in answers]
            replicas = await self.replica_of(ids)
            for client, request_id in zip(batch, ids, strict=True):
                self.clients.setdefault(replicas[request_id], []).append(client)

    def names(self) -> list[str]:
        return sorted(self.clients)

    async def close(self) -> None:
        for client in self._all:
            await client.aclose()


async def chat(
    client: httpx.AsyncClient, router: Router, model: str, **extra: object
) -> httpx.Response:
    return await client.post(f"{router.api_base}/chat/completions", json=chat_body(model, **extra))
