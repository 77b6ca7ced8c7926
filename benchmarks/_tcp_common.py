"""Process clusters for the TCP benchmarks: almost_raft nodes and PySyncObj nodes, side by side.

Every node prints its leader changes as JSON lines with the same keys
(``node``, ``term``, ``leader_id``, ``monotonic``), so one harness measures
both.  Run as a script, this module is the PySyncObj node::

    python benchmarks/_tcp_common.py pysyncobj --id n1 --listen 127.0.0.1:7001 \\
        --peer n2=127.0.0.1:7002 ... --min-timeout 0.15 --max-timeout 0.3 --heartbeat 0.075
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

Record = dict[str, Any]
HERE = Path(__file__).resolve().parent


def free_ports(count: int) -> list[int]:
    """Distinct ports free on 127.0.0.1 now."""
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of *pid* so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(values: Sequence[float]) -> dict[str, float]:
    """min, median, p90, p99, max and mean of *values* (nearest-rank percentiles)."""
    ordered = sorted(values)
    if not ordered:
        return {}

    def pct(p: float) -> float:
        rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1]

    return {
        "n": len(ordered),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p90": pct(90),
        "p99": pct(99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


class BenchNode:
    """One node process and the records it printed."""

    def __init__(self, cluster: BenchCluster, node_id: str, port: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.port = port
        self.popen: subprocess.Popen[str] | None = None
        self.records: list[Record] = []
        self.incarnation = 0
        self._stderr: IO[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, argv: list[str]) -> None:
        self.incarnation += 1
        log = self.cluster.workdir / f"{self.node_id}.stderr"
        self._stderr = open(log, "a", encoding="utf-8")  # noqa: SIM115 - closed in reap()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            cwd=self.cluster.cwd,
        )
        self._reader = threading.Thread(target=self._read, args=(self.popen, self.incarnation), daemon=True)
        self._reader.start()

    def _read(self, popen: subprocess.Popen[str], incarnation: int) -> None:
        assert popen.stdout is not None
        cond = self.cluster.cond
        for line in popen.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            record["_inc"] = incarnation
            with cond:
                self.records.append(record)
                cond.notify_all()
        popen.stdout.close()

    def latest(self) -> Record | None:
        for record in reversed(self.records):
            if record.get("event", "leader") == "leader" and record["_inc"] == self.incarnation:
                return record
        return None

    def first_time(self, term: int, leader: str, since: float) -> float | None:
        """When this node first printed (*term*, *leader*) after *since*."""
        for record in self.records:
            if record["monotonic"] >= since and record["term"] == term and record["leader_id"] == leader:
                return float(record["monotonic"])
        return None

    def signal(self, signum: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(signum)

    def reap(self, timeout: float = 10) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.kill()
        self.popen.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


class BenchCluster:
    """N node processes of one implementation on 127.0.0.1.

    Args:
        impl: ``"almost_raft"`` or ``"pysyncobj"``.
        size: number of nodes.
        min_timeout, max_timeout, heartbeat: the election timing, in seconds.
        backend: the almost_raft event loop (``asyncio`` or ``trio``).
        workdir: for the nodes' stderr logs (and storage files).
        storage: give almost_raft nodes a ``--storage`` file.
        pysyncobj_tick: PySyncObj's ``autoTickPeriod``.
        cwd: the nodes' working directory (``python -m almost_raft`` imports from it first).
    """

    def __init__(
        self,
        impl: str,
        size: int,
        *,
        min_timeout: float,
        max_timeout: float,
        heartbeat: float,
        backend: str,
        workdir: Path,
        storage: bool = False,
        pysyncobj_tick: float | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.impl = impl
        self.cwd = cwd
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.heartbeat = heartbeat
        self.backend = backend
        self.workdir = workdir
        self.storage = storage
        self.pysyncobj_tick = pysyncobj_tick if pysyncobj_tick is not None else min_timeout / 10
        self.cond = threading.Condition()
        self.ids = [f"n{i}" for i in range(1, size + 1)]
        ports = free_ports(size)
        self.nodes = {i: BenchNode(self, i, p) for i, p in zip(self.ids, ports, strict=True)}

    def argv(self, node_id: str) -> list[str]:
        node = self.nodes[node_id]
        peers = [f"{p}=127.0.0.1:{n.port}" for p, n in self.nodes.items() if p != node_id]
        if self.impl == "pysyncobj":
            argv = [sys.executable, str(HERE / "_tcp_common.py"), "pysyncobj", "--id", node_id]
            argv += ["--listen", f"127.0.0.1:{node.port}"]
            for peer in peers:
                argv += ["--peer", peer]
            argv += ["--min-timeout", str(self.min_timeout), "--max-timeout", str(self.max_timeout)]
            return [*argv, "--heartbeat", str(self.heartbeat), "--tick", str(self.pysyncobj_tick)]
        argv = [sys.executable, "-m", "almost_raft", "--id", node_id, "--listen", f"127.0.0.1:{node.port}", "--json"]
        for peer in peers:
            argv += ["--peer", peer]
        argv += ["--election-timeout", str(self.min_timeout), "--election-timeout-max", str(self.max_timeout)]
        argv += ["--heartbeat-interval", str(self.heartbeat), "--backend", self.backend]
        if self.storage:
            argv += ["--storage", str(self.workdir / f"{node_id}.state")]
        return argv

    def start(self, *ids: str) -> None:
        for node_id in ids or self.ids:
            self.nodes[node_id].start(self.argv(node_id))

    def close(self) -> None:
        for node in self.nodes.values():
            node.reap()

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.2))

    def agreed(self, ids: Sequence[str], *, not_leader: str | None = None, min_term: int = 0) -> tuple[int, str] | None:
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
        if leader == not_leader or term < min_term or leader not in ids:
            return None
        return int(term), str(leader)

    def wait_agreed(
        self, ids: Sequence[str] | None = None, *, timeout: float, not_leader: str | None = None, min_term: int = 0
    ) -> tuple[int, str] | None:
        chosen = list(ids or self.ids)
        result: tuple[int, str] | None = self.wait_for(
            lambda: self.agreed(chosen, not_leader=not_leader, min_term=min_term), timeout
        )
        return result

    def pids(self) -> dict[str, int]:
        return {i: n.popen.pid for i, n in self.nodes.items() if n.popen is not None and n.running}


# ------------------------------------------------------------ PySyncObj node


def _pysyncobj_node(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="_tcp_common.py pysyncobj")
    parser.add_argument("--id", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--min-timeout", type=float, required=True)
    parser.add_argument("--max-timeout", type=float, required=True)
    parser.add_argument("--heartbeat", type=float, required=True)
    parser.add_argument("--tick", type=float, required=True)
    args = parser.parse_args(argv)

    from pysyncobj import SyncObj, SyncObjConf  # type: ignore[import-not-found,import-untyped,unused-ignore]

    names = {args.listen: args.id}
    partners = []
    for peer in args.peer:
        peer_id, _, address = peer.partition("=")
        names[address] = peer_id
        partners.append(address)
    conf = SyncObjConf(
        raftMinTimeout=args.min_timeout,
        raftMaxTimeout=args.max_timeout,
        appendEntriesPeriod=args.heartbeat,
        autoTickPeriod=args.tick,
    )
    # PySyncObj asserts raftMinTimeout > 3 * appendEntriesPeriod; the experiment uses the same
    # heartbeat as almost_raft (half the minimum timeout), so that check is skipped.
    conf.validate = lambda: None
    last: list[object] = [None]
    lock = threading.Lock()

    def on_tick() -> None:
        leader = obj._getLeader()
        leader_id = None if leader is None else names.get(getattr(leader, "address", str(leader)), str(leader))
        view = (obj._SyncObj__raftCurrentTerm, leader_id)
        with lock:
            if view == last[0]:
                return
            last[0] = view
        record = {"event": "leader", "node": args.id, "term": view[0], "leader_id": view[1]}
        record["monotonic"] = time.monotonic()
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    obj = SyncObj(args.listen, partners, conf)
    obj.addOnTickCallback(on_tick)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    obj.destroy()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "pysyncobj":
        _pysyncobj_node(sys.argv[2:])
    else:
        sys.exit("usage: _tcp_common.py pysyncobj --id ID --listen HOST:PORT --peer ID=HOST:PORT ...")
