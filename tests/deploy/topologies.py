"""Real Redis topologies on loopback for the deployment tests: a 3-master Cluster, and a
primary + replica + Sentinel set, optionally over TLS. Each server runs in memory only from a
private temporary directory, in its own process group, and is killed when its topology closes.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import redis

from integration.procs import port_is_free
from redis_server import RedisServerError, free_port
from tls_redis import Certificates, make_certificates

START_TIMEOUT_S = 20.0
LOOPBACK = "127.0.0.1"


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return
        time.sleep(0.05)
    raise RedisServerError(f"timed out after {timeout_s:g}s waiting for {what}")


def cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free (and exists) too."""
    for _ in range(500):
        port = random.randint(20000, 50000)
        if port_is_free(port) and port_is_free(port + 10000):
            return port
    raise RedisServerError("no free pair of ports for a cluster node")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RedisServerError(f"{name} was not found on PATH (Debian: apt-get install redis)")
    return path


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=2, decode_responses=True)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def log_tail(self, lines: int = 15) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _tls_args(certs: Certificates, tls_port: int) -> list[str]:
    """TLS on ``tls_port`` beside the plain port, client certificates required, and TLS for
    what the server itself connects to (a replica to its primary, a sentinel to both, the
    cluster bus)."""
    return [
        "--tls-port", str(tls_port), "--tls-cert-file", certs.path("server.crt"),
        "--tls-key-file", certs.path("server.key"), "--tls-ca-cert-file", certs.path("ca.crt"),
        "--tls-auth-clients", "yes", "--tls-replication", "yes", "--tls-cluster", "yes",
    ]  # fmt: skip


@dataclass
class Topology:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="llmr-topo-")))
    servers: list[Server] = field(default_factory=list)
    #: Set on a TLS topology: the certificates, and each server's TLS port by plain port
    #: (the plain ports stay for the tests' own probes).
    certs: Certificates | None = None
    tls_ports: dict[int, int] = field(default_factory=dict)

    def spawn(self, name: str, *args: str, port: int | None = None) -> Server:
        port = port or free_port()
        if self.certs is not None:
            # The TLS port carries the cluster bus on a TLS cluster: its +10000 must be free.
            self.tls_ports[port] = cluster_port()
            args = (*args, *_tls_args(self.certs, self.tls_ports[port]))
        log = self.workdir / f"{name}-{port}.log"
        process = subprocess.Popen(
            [_binary("redis-server"), *args, "--port", str(port), "--bind", LOOPBACK,
             "--dir", str(self.workdir), "--logfile", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        server = Server(port, process, log)
        self.servers.append(server)
        _wait(lambda: bool(server.client().ping()), START_TIMEOUT_S, f"{name} on {port}")
        return server

    def served(self, server: Server) -> int:
        """The port the others reach ``server`` on: its TLS port on a TLS topology."""
        return self.tls_ports.get(server.port, server.port)

    def tls_query(self, ca_certs: str) -> str:
        """The URL options: trust ``ca_certs``, present this topology's client certificate."""
        assert self.certs is not None, "not a TLS topology"
        query = {
            "ssl_ca_certs": ca_certs,
            "ssl_certfile": self.certs.path("client.crt"),
            "ssl_keyfile": self.certs.path("client.key"),
        }
        return urlencode(query)

    def logs(self) -> str:
        return "\n".join(f"--- {s.log.name}\n{s.log_tail()}" for s in self.servers)

    def close(self) -> None:
        for server in self.servers:
            server.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class ClusterTopology(Topology):
    @property
    def masters(self) -> list[Server]:
        return self.servers

    @property
    def url(self) -> str:
        """Two seed nodes, as an operator would list them."""
        if self.certs is None:
            return f"redis+cluster://{self._seeds()}"
        return self.tls_url(self.certs.path("ca.crt"))

    def tls_url(self, ca_certs: str) -> str:
        """``rediss+cluster://`` to the seeds' TLS ports, trusting ``ca_certs``."""
        return f"rediss+cluster://{self._seeds()}?{self.tls_query(ca_certs)}"

    def _seeds(self) -> str:
        return ",".join(f"{LOOPBACK}:{self.served(s)}" for s in self.servers[:2])


def start_cluster(masters: int = 3, *, tls: bool = False) -> ClusterTopology:
    """``masters`` masters sharing the slots; with ``tls``, clients and the cluster bus
    speak TLS with client certificates, from a CA made here."""
    topo = ClusterTopology()
    try:
        topo.certs = make_certificates(topo.workdir) if tls else None
        for i in range(masters):
            conf = topo.workdir / f"nodes-{i}.conf"
            topo.spawn(
                f"cluster{i}",
                "--cluster-enabled", "yes", "--cluster-config-file", str(conf),
                "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                port=cluster_port(),
            )  # fmt: skip
        tls_cli = []
        if topo.certs is not None:
            tls_cli = ["--tls", "--cacert", topo.certs.path("ca.crt"),
                       "--cert", topo.certs.path("client.crt"),
                       "--key", topo.certs.path("client.key")]  # fmt: skip
        created = subprocess.run(
            [_binary("redis-cli"), *tls_cli, "--cluster", "create",
             *(f"{LOOPBACK}:{topo.served(s)}" for s in topo.servers),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if created.returncode != 0:
            raise RedisServerError(f"redis-cli --cluster create failed:\n{created.stdout}")

        def all_ok() -> bool:
            return all(
                s.client().cluster("INFO").get("cluster_state") == "ok" for s in topo.servers
            )

        _wait(all_ok, START_TIMEOUT_S, "cluster_state:ok on every master")
    except BaseException:
        topo.close()
        raise
    return topo


@dataclass
class SentinelTopology(Topology):
    service: str = "mymaster"

    @property
    def primary(self) -> Server:
        return self.servers[0]

    @property
    def replica(self) -> Server:
        return self.servers[1]

    @property
    def sentinel(self) -> Server:
        return self.servers[2]

    @property
    def url(self) -> str:
        if self.certs is None:
            return f"redis+sentinel://{LOOPBACK}:{self.sentinel.port}/{self.service}"
        return self.tls_url(self.certs.path("ca.crt"))

    def tls_url(self, ca_certs: str) -> str:
        """``rediss+sentinel://`` to the sentinel's TLS port, trusting ``ca_certs``."""
        port = self.served(self.sentinel)
        return f"rediss+sentinel://{LOOPBACK}:{port}/{self.service}?{self.tls_query(ca_certs)}"

    def current_primary_port(self) -> int:
        address: Any = self.sentinel.client().sentinel_get_master_addr_by_name(self.service)
        return int(address[1])


def start_sentinel(
    down_after_ms: int = 1000, failover_timeout_ms: int = 3000, *, tls: bool = False
) -> SentinelTopology:
    """A primary, a replica and one sentinel; with ``tls``, every link between them and to
    them is TLS with client certificates, from a CA made here."""
    topo = SentinelTopology()
    try:
        topo.certs = make_certificates(topo.workdir) if tls else None
        # No diskless-sync delay: the replica's first sync would otherwise wait 5 s.
        primary = topo.spawn(
            "primary", "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"
        )
        replica = topo.spawn(
            "replica", "--save", "", "--appendonly", "no",
            "--replicaof", LOOPBACK, str(topo.served(primary)),
        )  # fmt: skip
        _wait(
            lambda: replica.client().info("replication").get("master_link_status") == "up",
            START_TIMEOUT_S,
            "the replica to sync",
        )
        conf = topo.workdir / "sentinel.conf"
        # Sentinel rewrites its config file, so it must be a private writable file.
        conf.write_text(
            f"sentinel monitor {topo.service} {LOOPBACK} {topo.served(primary)} 1\n"
            f"sentinel down-after-milliseconds {topo.service} {down_after_ms}\n"
            f"sentinel failover-timeout {topo.service} {failover_timeout_ms}\n"
        )
        sentinel = topo.spawn("sentinel", str(conf), "--sentinel")

        def sees_replica() -> bool:
            replicas = sentinel.client().sentinel_slaves(topo.service)
            return any("s_down" not in str(r) for r in replicas) and bool(replicas)

        _wait(sees_replica, START_TIMEOUT_S, "the sentinel to discover the replica")
    except BaseException:
        topo.close()
        raise
    return topo


T = TypeVar("T", bound=Topology)


@contextlib.contextmanager
def opened(topology: T) -> Iterator[T]:
    """``topology`` until the block ends; then its log tails are printed and it is killed."""
    try:
        yield topology
    finally:
        print(topology.logs())
        topology.close()
