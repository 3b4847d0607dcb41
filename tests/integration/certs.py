"""Certificates made at test time with the openssl command line, as docs/deployment.md shows.

A ``CertAuthority`` signs leaf certificates valid for 127.0.0.1 and localhost, usable as
a server and as a client certificate (mTLS). Keys are P-256 and live in a temp directory.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertAuthority:
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> CertAuthority:
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return cls(cert, key)

    def issue(self, directory: Path, name: str) -> Leaf:
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
            "-CA", str(self.cert), "-CAkey", str(self.key),
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "extendedKeyUsage=serverAuth,clientAuth",
        )  # fmt: skip
        return Leaf(cert, key)
