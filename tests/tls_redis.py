"""A redis-server that speaks TLS, with a certificate authority made at test time.

``openssl`` (Debian's) makes a throw-away CA, a server certificate for 127.0.0.1 and a
client certificate, all in a private temporary directory that is removed when the server
stops; nothing is committed. The server requires client certificates on its TLS port and
also listens on a plain port, for probes that are not under test.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import redis

START_TIMEOUT_S = 10.0
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl was not found on PATH (Debian: apt-get install openssl)")
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _signed(name: str, subject: str, extensions: str, cwd: Path) -> None:
    _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
             cwd=cwd)  # fmt: skip
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
             "-extfile", f"{name}.ext", cwd=cwd)  # fmt: skip


@dataclass(frozen=True)
class Certificates:
    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=llm-router test CA", cwd=directory)  # fmt: skip
    _signed("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\n", directory)
    _signed("client", "/CN=llm-router", "extendedKeyUsage=clientAuth\n", directory)
    return Certificates(directory)


@dataclass
class TlsRedis:
    tls_port: int
    plain_port: int
    certs: Certificates
    process: subprocess.Popen[bytes]
    workdir: Path

    def url(self, **options: str) -> str:
        """``rediss://`` with the CA and client certificate unless ``options`` override."""
        query = {
            "ssl_ca_certs": self.certs.path("ca.crt"),
            "ssl_certfile": self.certs.path("client.crt"),
            "ssl_keyfile": self.certs.path("client.key"),
            **options,
        }
        return f"rediss://127.0.0.1:{self.tls_port}/0?{urlencode(query)}"

    def plain_client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.plain_port, socket_timeout=2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def server_args(certs: Certificates, tls_port: int, plain_port: int) -> list[str]:
    """``redis-server`` arguments: TLS with client certificates required, plus a plain port."""
    return [
        "redis-server", "--port", str(plain_port), "--tls-port", str(tls_port),
        "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(certs.directory), "--logfile", certs.path("redis.log"),
        "--tls-cert-file", certs.path("server.crt"), "--tls-key-file", certs.path("server.key"),
        "--tls-ca-cert-file", certs.path("ca.crt"), "--tls-auth-clients", "yes",
    ]  # fmt: skip


def start_tls_redis(tls_port: int, plain_port: int) -> TlsRedis:
    workdir = Path(tempfile.mkdtemp(prefix="llmr-tls-redis-"))
    try:
        certs = make_certificates(workdir)
        process = subprocess.Popen(
            server_args(certs, tls_port, plain_port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    server = TlsRedis(tls_port, plain_port, certs, process, workdir)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(redis.RedisError):
            if server.plain_client().ping():
                return server
        time.sleep(0.05)
    log = (workdir / "redis.log").read_text(errors="replace")[-2000:] if workdir.exists() else ""
    server.stop()
    raise RuntimeError(f"redis-server with TLS did not start (built without TLS?):\n{log}")


@contextlib.contextmanager
def running_tls_redis(tls_port: int, plain_port: int) -> Iterator[TlsRedis]:
    server = start_tls_redis(tls_port, plain_port)
    try:
        yield server
    finally:
        server.stop()
