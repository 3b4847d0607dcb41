"""The Redis deployments a router row runs on: plain, Sentinel, a 3-master Cluster, TLS.

Each starter runs its servers in the caller's ``ProcessStack`` and returns the URL the
router gets, plus the plain port and process of the server that holds the fleet (for the
commandstats and MONITOR probes, and Redis's CPU per request). Sentinel monitors the same
single server (no replica), so the row isolates what the client path costs, as the plain
row does; the Cluster's fleet lives on whichever master owns the ``{llmr}`` slot.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import redis
from redis.crc import key_slot
from tests.benchmarks.procs import Proc, ProcessStack, Unavailable, free_port, wait_port
from tests.tls_redis import make_certificates, server_args

#: The fleet's base key under the router's default prefix: its slot is the fleet's slot.
FLEET_BASE = "{llmr}:"
SERVER_FLAGS = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


@dataclass
class StoreHandle:
    url: str
    probe_port: int
    proc: Proc
    #: The sentinel's port on a Sentinel deployment, for counting what it is asked.
    sentinel_port: int | None = None


def _server(
    stack: ProcessStack,
    name: str,
    cpus: str | None,
    *args: str,
    conf: Path | None = None,
    port: int | None = None,
) -> tuple[Proc, int]:
    port = port or free_port()
    first = [str(conf)] if conf else []  # a config file must come before the flags
    argv = ["redis-server", *first, "--port", str(port), *SERVER_FLAGS, *args]
    proc = stack.start(name, argv, cpus=cpus)
    wait_port(proc, port, 10)
    return proc, port


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is a valid, free port too."""
    for _ in range(200):
        port = free_port()
        if port <= 55535 and _free(port + 10000):
            return port
    raise Unavailable("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise Unavailable(f"timed out waiting for {what}")


def plain(stack: ProcessStack, work: Path, cpus: str | None) -> StoreHandle:
    proc, port = _server(stack, "redis", cpus, "--dir", str(work))
    return StoreHandle(f"redis://127.0.0.1:{port}/0", port, proc)


def sentinel(stack: ProcessStack, work: Path, cpus: str | None) -> StoreHandle:
    proc, port = _server(stack, "redis-primary", cpus, "--dir", str(work))
    conf = work / "sentinel.conf"
    conf.write_text(f"sentinel monitor bench 127.0.0.1 {port} 1\n")
    _, sentinel_port = _server(stack, "sentinel", cpus, "--sentinel", conf=conf)
    client = redis.Redis(host="127.0.0.1", port=sentinel_port, socket_timeout=2)
    _wait(lambda: bool(client.sentinel_get_master_addr_by_name("bench")), "the sentinel")
    url = f"redis+sentinel://127.0.0.1:{sentinel_port}/bench"
    return StoreHandle(url, port, proc, sentinel_port)


def cluster(stack: ProcessStack, work: Path, cpus: str | None) -> StoreHandle:
    masters: list[tuple[Proc, int]] = []
    for i in range(3):
        masters.append(
            _server(
                stack, f"cluster-{i}", cpus, "--cluster-enabled", "yes",
                "--cluster-config-file", str(work / f"nodes-{i}.conf"), "--dir", str(work),
                port=_cluster_port(),
            )
        )  # fmt: skip
    created = subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for _, p in masters),
         "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    if created.returncode != 0:
        raise Unavailable(f"redis-cli --cluster create failed: {created.stdout[-300:]}")
    clients = [redis.Redis(host="127.0.0.1", port=p, decode_responses=True) for _, p in masters]
    _wait(lambda: all(c.cluster("INFO")["cluster_state"] == "ok" for c in clients), "the cluster")
    owner_port = _slot_owner(clients[0], key_slot(FLEET_BASE.encode()))
    owner = next(proc for proc, port in masters if port == owner_port)
    seeds = ",".join(f"127.0.0.1:{p}" for _, p in masters[:2])
    return StoreHandle(f"redis+cluster://{seeds}", owner_port, owner)


def _slot_owner(client: redis.Redis, slot: int) -> int:
    for start, end, primary, *_ in client.cluster("SLOTS"):
        if start <= slot <= end:
            return int(primary[1])
    raise Unavailable(f"no cluster node owns slot {slot}")


def tls(stack: ProcessStack, work: Path, cpus: str | None) -> StoreHandle:
    certs = make_certificates(work)
    tls_port, plain_port = free_port(), free_port()
    proc = stack.start("redis-tls", server_args(certs, tls_port, plain_port), cpus=cpus)
    wait_port(proc, plain_port, 10)
    query = urlencode(
        {
            "ssl_ca_certs": certs.path("ca.crt"),
            "ssl_certfile": certs.path("client.crt"),
            "ssl_keyfile": certs.path("client.key"),
        }
    )
    return StoreHandle(f"rediss://127.0.0.1:{tls_port}/0?{query}", plain_port, proc)


STORES: dict[str, Callable[[ProcessStack, Path, str | None], StoreHandle]] = {
    "plain": plain,
    "sentinel": sentinel,
    "cluster": cluster,
    "tls": tls,
}
