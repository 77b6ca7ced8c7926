"""Fixtures for the operator features: real clocks, node processes running ``--exec`` children.

The HTTP tests talk over real sockets, so trio runs on its real clock here
(as in ``tests/network``).  Every process a test starts is killed at
teardown, pass or fail, including children and supervisors left behind: they
are found by the test's own temporary directory in their command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ._exec_procs import ExecCluster


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends, on their real clocks (sockets are real here)."""
    return str(request.param)


def kill_leftovers(directory: Path) -> None:
    """SIGKILL every process whose command line names *directory* (children, supervisors, witnesses)."""
    mark = str(directory).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if mark in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture
def exec_cluster(tmp_path: Path) -> Iterator[Callable[..., ExecCluster]]:
    """Build ``ExecCluster``s; everything they started is killed at teardown."""
    clusters: list[ExecCluster] = []

    def make(ids: list[str], **options: Any) -> ExecCluster:
        cluster = ExecCluster(tmp_path, ids, **options)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()
        if Path("/proc").is_dir():
            kill_leftovers(tmp_path)
