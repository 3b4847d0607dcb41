"""What the router asks of Redis per proxied request: commandstats deltas and MONITOR counts."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx
import redis

_OWN = {"info", "config|resetstat", "monitor", "config"}


def command_calls(port: int) -> Counter[str]:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        info: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    calls: Counter[str] = Counter()
    for name, value in info.items():
        if name.startswith("cmdstat_") and isinstance(value, dict):
            calls[name[len("cmdstat_") :]] = int(value["calls"])
    return calls


def per_request(before: Counter[str], after: Counter[str], requests: int) -> dict[str, Any]:
    delta = {k: after[k] - before.get(k, 0) for k in after if k not in _OWN}
    delta = {k: v for k, v in delta.items() if v > 0}
    total = sum(delta.values())
    top = sorted(((k, v / requests) for k, v in delta.items()), key=lambda kv: -kv[1])
    return {
        "commands_per_request": total / requests if requests else None,
        "top_commands": top,
    }


def client_commands_per_request(
    port: int, url: str, body: dict[str, Any], headers: dict[str, str], requests: int
) -> float | None:
    """Commands sent by clients (not by scripts) per request, counted with MONITOR.

    MONITOR slows Redis down, so this runs on its own short sequential loop, never
    during a throughput measurement. Pipelined commands count one each: the figure is
    an upper bound on round trips.
    """
    seen: Counter[str] = Counter()
    stop = threading.Event()
    ready = threading.Event()

    def watch() -> None:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
        try:
            with client.monitor() as monitor:  # type: ignore[no-untyped-call]
                ready.set()
                while not stop.is_set():
                    try:
                        entry = monitor.next_command()
                    except (redis.TimeoutError, redis.ConnectionError):
                        continue
                    kind = "lua" if entry.get("client_type") == "lua" else "client"
                    seen[kind] += 1
        finally:
            ready.set()
            client.close()

    thread = threading.Thread(target=watch, name="monitor", daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.2)
    done = 0
    with httpx.Client(timeout=10) as client:
        for _ in range(requests):
            if client.post(url, json=body, headers=headers).status_code == 200:
                done += 1
    time.sleep(0.3)
    stop.set()
    thread.join(timeout=5)
    return seen["client"] / done if done else None
