"""Run ``python -m almost_raft`` nodes as real OS processes and read their ``--json`` lines.

Every process is started by a ``ProcCluster`` and killed by its ``close()``
(the fixtures call it even when a test fails).  Waiting is always for a
condition on the lines printed so far, under a deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

Record = dict[str, Any]


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (all bound at once, so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


class NodeProc:
    """One node process and the records it printed."""

    def __init__(self, cluster: ProcCluster, node_id: str, port: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.port = port
        self.popen: subprocess.Popen[str] | None = None
        self.records: list[Record] = []
        self.bad_lines: list[str] = []
        self.stderr_path = cluster.workdir / f"{node_id}.stderr"
        self.starts = 0
        self._reader: threading.Thread | None = None
        self._stderr: IO[str] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, args: Sequence[str], *, prefix: Sequence[str] = ()) -> None:
        """Start ``python -m almost_raft ARGS``, run by the command *prefix* if one is given."""
        assert not self.running, f"{self.node_id} is already running"
        self.starts += 1
        self._stderr = open(self.stderr_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in wait()/close()
        self._stderr.write(f"----- start #{self.starts}: {' '.join(args)}\n")
        self._stderr.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", "almost_raft", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, args=(self.popen,), daemon=True)
        self._reader.start()

    def _read(self, popen: subprocess.Popen[str]) -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                with self.cluster.cond:
                    self.bad_lines.append(line)
                continue
            record["_start"] = self.starts
            with self.cluster.cond:
                self.records.append(record)
                self.cluster.cond.notify_all()
        with self.cluster.cond:
            self.cluster.cond.notify_all()

    def signal(self, signum: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to end (it was told to) and for its output to be read."""
        assert self.popen is not None
        code = self.popen.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if self.popen.stdout is not None and not self._reader_alive():
            self.popen.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return code

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def kill(self) -> None:
        """SIGKILL (after SIGCONT, in case it was stopped) and reap; safe to call twice."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            for signum in (signal.SIGCONT, signal.SIGKILL):
                try:
                    self.popen.send_signal(signum)
                except ProcessLookupError:  # pragma: no cover - ended meanwhile
                    break
        self.wait(10)

    def leader_records(self, start: int | None = None) -> list[Record]:
        """Its leader-change records (of one incarnation when *start* is given)."""
        with self.cluster.cond:
            return [r for r in self.records if r.get("event") == "leader" and (start is None or r["_start"] == start)]

    def latest(self) -> Record | None:
        """Its latest leader-change record of the current incarnation."""
        records = self.leader_records(self.starts)
        return records[-1] if records else None

    def stopped_record(self) -> Record | None:
        with self.cluster.cond:
            return next((r for r in reversed(self.records) if r.get("event") == "stopped"), None)

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8")
        except OSError:
            return ""


class ProcCluster:
    """N node processes on 127.0.0.1, each with ``--json``.

    Args:
        workdir: where stderr logs and storage files go.
        ids: the node ids.
        election_timeout, heartbeat_interval: passed to every node.
        extra: more arguments for every node.
        per_node: more arguments for one node (by id).
        storage: give each node ``--storage workdir/<id>.state``.
        hosts: the address each node listens on (default 127.0.0.1 for all).
        prefixes: a command prefix per node, to run it elsewhere (``ip netns exec NS``).
    """

    def __init__(
        self,
        workdir: Path,
        ids: Sequence[str],
        *,
        election_timeout: float = 0.15,
        heartbeat_interval: float | None = None,
        extra: Sequence[str] = (),
        per_node: dict[str, Sequence[str]] | None = None,
        storage: bool = False,
        hosts: dict[str, str] | None = None,
        prefixes: dict[str, Sequence[str]] | None = None,
    ) -> None:
        self.workdir = workdir
        self.cond = threading.Condition()
        self.ids = list(ids)
        ports = free_ports(len(self.ids))
        self.nodes = {node_id: NodeProc(self, node_id, port) for node_id, port in zip(self.ids, ports, strict=True)}
        self.election_timeout = election_timeout
        self.heartbeat_interval = heartbeat_interval
        self.extra = list(extra)
        self.per_node = dict(per_node or {})
        self.storage = storage
        self.hosts = dict.fromkeys(self.ids, "127.0.0.1") | dict(hosts or {})
        self.prefixes = dict(prefixes or {})

    def __getitem__(self, node_id: str) -> NodeProc:
        return self.nodes[node_id]

    def storage_path(self, node_id: str) -> Path:
        return self.workdir / f"{node_id}.state"

    def args(self, node_id: str) -> list[str]:
        node = self.nodes[node_id]
        args = ["--id", node_id, "--listen", f"{self.hosts[node_id]}:{node.port}", "--json"]
        for peer_id, peer in self.nodes.items():
            if peer_id != node_id:
                args += ["--peer", f"{peer_id}={self.hosts[peer_id]}:{peer.port}"]
        args += ["--election-timeout", str(self.election_timeout)]
        if self.heartbeat_interval is not None:
            args += ["--heartbeat-interval", str(self.heartbeat_interval)]
        if self.storage:
            args += ["--storage", str(self.storage_path(node_id))]
        return args + self.extra + list(self.per_node.get(node_id, ()))

    def start(self, *ids: str) -> None:
        for node_id in ids or self.ids:
            self.nodes[node_id].start(self.args(node_id), prefix=self.prefixes.get(node_id, ()))

    def close(self) -> None:
        """Kill and reap every process, even after a failure."""
        for node in self.nodes.values():
            node.kill()

    # --------------------------------------------------------------- waiting

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait until *predicate()* returns something truthy (called under the lock); return it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.describe()}")
                self.cond.wait(min(left, 0.5))

    def agreed(self, ids: Sequence[str], *, not_leader: str | None = None, min_term: int = 0) -> tuple[int, str] | None:
        """``(term, leader)`` when every node in *ids* runs and its latest view names that same leader."""
        views = set()
        for node_id in ids:
            node = self.nodes[node_id]
            latest = node.latest()
            if not node.running or latest is None or latest["leader_id"] is None:
                return None
            views.add((latest["term"], latest["leader_id"]))
        if len(views) != 1:
            return None
        term, leader = views.pop()
        if leader == not_leader or term < min_term:
            return None
        return term, leader

    def wait_agreed(
        self,
        ids: Sequence[str] | None = None,
        *,
        timeout: float = 10.0,
        not_leader: str | None = None,
        min_term: int = 0,
    ) -> tuple[int, str]:
        """Wait until the nodes *ids* (default: all) agree on one leader; return ``(term, leader)``."""
        chosen = list(ids or self.ids)
        result: tuple[int, str] = self.wait_for(
            lambda: self.agreed(chosen, not_leader=not_leader, min_term=min_term),
            timeout,
            f"{chosen} to agree on a leader" + (f" other than {not_leader}" if not_leader else ""),
        )
        return result

    def describe(self) -> str:
        lines = []
        for node in self.nodes.values():
            state = "running" if node.running else f"exited {None if node.popen is None else node.popen.poll()}"
            views = [(r["term"], r["leader_id"]) for r in node.leader_records()]
            lines.append(f"  {node.node_id} ({state}, starts {node.starts}): {views[-12:]}")
            if node.bad_lines:
                lines.append(f"    non-JSON stdout: {node.bad_lines[:3]}")
            tail = node.stderr_text().strip().splitlines()[-5:]
            lines += [f"    stderr: {t}" for t in tail]
        return "\n".join(lines)
