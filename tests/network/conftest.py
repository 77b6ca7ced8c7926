"""Fixtures for the network tests: real clocks, node processes, TLS certificates.

The in-process TCP tests talk over real sockets, so trio runs on its real
clock here: a virtual clock would jump ahead while a task waits for the
kernel, and fire timeouts that never happened.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ._procs import ProcCluster


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends, on their real clocks (sockets are real here)."""
    return str(request.param)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., ProcCluster]]:
    """Build ``ProcCluster``s; every process they started is killed at teardown, pass or fail."""
    clusters: list[ProcCluster] = []

    def make(ids: list[str], **options: Any) -> ProcCluster:
        cluster = ProcCluster(tmp_path, ids, **options)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()


@dataclass(frozen=True)
class Certs:
    """Certificates made for one test session."""

    directory: Path
    ca: Path

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def tls_args(self, name: str) -> list[str]:
        return ["--tls-cert", str(self.cert(name)), "--tls-key", str(self.key(name)), "--tls-ca", str(self.ca)]


_CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_LEAF_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
"""

_LEAF_EXTENSIONS = """\
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:{cn}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(directory: Path, name: str) -> None:
    (directory / f"{name}.cnf").write_text(_CA_CONFIG.format(cn=f"almost-raft test {name}"))
    _openssl(
        "req", "-x509", "-config", f"{name}.cnf", "-extensions", "v3_ca", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-days", "2", cwd=directory,
    )  # fmt: skip


def _make_leaf(directory: Path, cn: str, ca: str, out: str, serial: int) -> None:
    (directory / f"{out}.cnf").write_text(_LEAF_CONFIG.format(cn=cn))
    (directory / f"{out}.ext").write_text(_LEAF_EXTENSIONS.format(cn=cn))
    _openssl(
        "req", "-new", "-config", f"{out}.cnf", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{out}.key", "-out", f"{out}.csr", cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{out}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-set_serial",
        str(serial), "-days", "2", "-extfile", f"{out}.ext", "-out", f"{out}.pem", cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA with certificates for nodes a, b, c and x, plus a rogue CA's certificate for "a".

    Made with the ``openssl`` command line at test time; the tests that need
    them are skipped (with the reason) where it is missing.
    """
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is needed to make test certificates")
    directory = tmp_path_factory.mktemp("certs")
    _make_ca(directory, "ca")
    _make_ca(directory, "rogue-ca")
    for serial, name in enumerate(("a", "b", "c", "x"), start=1):
        _make_leaf(directory, name, "ca", name, serial)
    _make_leaf(directory, "a", "rogue-ca", "rogue-a", 1)
    return Certs(directory, directory / "ca.pem")
