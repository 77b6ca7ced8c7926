"""``--exec`` handovers: the gap between the old leader's child's end and the new leader's child's start.

Three ``python -m almost_raft ... --exec -- python tests/ops/_child.py`` nodes on
loopback.  In each trial the node whose child runs is either

* sent SIGTERM (a planned handover: the child gets SIGTERM and exits, then the
  node hands leadership over with ``TimeoutNow``), or
* SIGKILLed (its supervisor sees the node's end and kills the child at once;
  the others elect a new leader after an election timeout),

and restarted afterwards.  Times come from the children themselves, on the
monotonic clock shared by every process on the machine: ``_child.py`` writes
its start once it holds an ``flock`` that the kernel keeps until the old
child's whole process group is gone, and a witness outside the group writes
the moment the group ended (see ``tests/ops/_child.py``).

* gap: new child's start minus old child's end (includes the new child's
  Python start-up, about 20-40 ms);
* spawn gap: the new child's spawn by its supervisor minus the old child's end;
* stop: the old child's end minus the signal to its node;
* overlaps: trials where the new child started before the old one's group was
  gone, or found the lock held (must be 0).

Results go to ``benchmarks/results/exec_handover.json``.

    python benchmarks/exec_handover.py                  # 30 trials of each
    python benchmarks/exec_handover.py --trials 50 --backend trio
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _perf_common import table, write_json
from _tcp_common import free_ports, summarize

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "ops" / "_child.py"


class Cluster:
    """Three node processes running ``_child.py`` under ``--exec``; their output goes to files."""

    def __init__(self, workdir: Path, timeout: float, backend: str) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self.backend = backend
        self.ids = ["a", "b", "c"]
        self.ports = dict(zip(self.ids, free_ports(3), strict=True))
        self.log = workdir / "children.log"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = dict.fromkeys(self.ids, 0)

    def argv(self, node_id: str) -> list[str]:
        argv = [sys.executable, "-m", "almost_raft", "--id", node_id, "--listen", f"127.0.0.1:{self.ports[node_id]}"]
        for peer in self.ids:
            if peer != node_id:
                argv += ["--peer", f"{peer}=127.0.0.1:{self.ports[peer]}"]
        argv += ["--json", "--election-timeout", str(self.timeout), "--backend", self.backend]
        child = [sys.executable, str(CHILD), "--log", str(self.log), "--lock", str(self.workdir / "lock")]
        return [*argv, "--exec", "--", *child, "--tick", "0.05"]

    def start(self, node_id: str) -> None:
        self.starts[node_id] += 1
        out = open(self.workdir / f"{node_id}.{self.starts[node_id]}.out", "wb")  # noqa: SIM115 - handed to the child
        err = open(self.workdir / f"{node_id}.err", "ab")  # noqa: SIM115
        with out, err:
            self.procs[node_id] = subprocess.Popen(self.argv(node_id), stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(10)

    def records(self) -> list[dict[str, Any]]:
        try:
            lines = self.log.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def children(self) -> dict[int, dict[str, Any]]:
        """pid -> {node, term, run, start, end, overlap}."""
        out: dict[int, dict[str, Any]] = {}
        for r in self.records():
            child = out.setdefault(r["pid"], {"node": r["node"], "term": r["term"], "run": r["run"]})
            if r["ev"] in ("start", "end", "overlap"):
                child[r["ev"]] = r["t"]
        return {pid: c for pid, c in out.items() if "start" in c}

    def wait_joined(self, node_id: str, timeout: float = 20.0) -> None:
        """Wait until the (re)started *node_id* printed a known leader: it has joined."""
        path = self.workdir / f"{node_id}.{self.starts[node_id]}.out"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("{") and '"leader"' in line and json.loads(line).get("leader_id") is not None:
                    return
            time.sleep(0.01)
        raise TimeoutError(f"{node_id} did not join")

    def spawned_at(self, node_id: str, pid: int) -> float | None:
        """When the supervisor of *node_id* spawned *pid* (its ``started`` event)."""
        path = self.workdir / f"{node_id}.{self.starts[node_id]}.out"
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{") and '"child"' in line:
                record = json.loads(line)
                if record.get("what") == "started" and record.get("pid") == pid:
                    return float(record["monotonic"])
        return None

    def running_child(self, *, after: float = 0.0, timeout: float = 20.0) -> tuple[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid, child in self.children().items():
                node = child["node"]
                if "end" not in child and child["start"] > after and self.procs[node].poll() is None:
                    return pid, child
            time.sleep(0.005)
        raise TimeoutError("no child started")


def trial(cluster: Cluster, how: str, rng: random.Random) -> dict[str, Any]:
    pid, child = cluster.running_child()
    # A random phase of the heartbeat interval, a few rounds after the child started.
    time.sleep(rng.uniform(0.3, 0.3 + cluster.timeout / 3))
    node = child["node"]
    signalled = time.monotonic()
    cluster.procs[node].send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    new_pid, new = cluster.running_child(after=child["start"])
    cluster.procs[node].wait(20)
    old = cluster.children()[pid]
    time.sleep(0.05)
    spawned = cluster.spawned_at(new["node"], new_pid)
    cluster.start(node)
    cluster.wait_joined(node)  # its start-up (CPU-heavy) is over before the next trial
    overlap = "overlap" in new or "end" not in old or old["end"] >= new["start"]
    return {
        "old": {**old, "pid": pid},
        "new": {**new, "pid": new_pid},
        "gap": new["start"] - old["end"] if "end" in old else None,
        "spawn_gap": spawned - old["end"] if spawned is not None and "end" in old else None,
        "stop": old["end"] - signalled if "end" in old else None,
        "overlap": overlap,
        "terms_grow": new["term"] > old["term"],
    }


def run(how: str, trials: int, timeout: float, backend: str, rng: random.Random) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="exec-handover-") as tmp:
        cluster = Cluster(Path(tmp), timeout, backend)
        try:
            for node_id in cluster.ids:
                cluster.start(node_id)
            results = [trial(cluster, how, rng) for _ in range(trials)]
            time.sleep(0.2)
            leftover_overlaps = sum(1 for c in cluster.children().values() if "overlap" in c)
        finally:
            cluster.close()
    gaps = [r["gap"] for r in results if r["gap"] is not None]
    spawn = [r["spawn_gap"] for r in results if r["spawn_gap"] is not None]
    stops = [r["stop"] for r in results if r["stop"] is not None]
    return {
        "scenario": how,
        "trials": trials,
        "gap": summarize(gaps),
        "spawn_gap": summarize(spawn),
        "stop": summarize(stops),
        "overlaps": sum(1 for r in results if r["overlap"]) + leftover_overlaps,
        "terms_always_grew": all(r["terms_grow"] for r in results),
        "raw": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=30, help="trials of each scenario (default 30)")
    parser.add_argument("--election-timeout", type=float, default=0.15, help="T (default 0.15)")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    scenarios = [run(how, args.trials, args.election_timeout, args.backend, rng) for how in ("sigterm", "sigkill")]
    ms = 1000.0
    rows = []
    for s in scenarios:
        rows.append(
            [
                "SIGTERM to the leader (handover)" if s["scenario"] == "sigterm" else "SIGKILL to the leader",
                s["trials"],
                s["gap"]["median"] * ms,
                s["gap"]["p99"] * ms,
                s["gap"]["max"] * ms,
                s["spawn_gap"]["median"] * ms,
                s["spawn_gap"]["p99"] * ms,
                s["stop"]["median"] * ms,
                s["stop"]["p99"] * ms,
                s["overlaps"],
            ]
        )
    print(
        f"--exec handovers, 3 nodes on loopback, T = {args.election_timeout * ms:.0f} ms, {args.backend}, "
        f"{os.cpu_count()} CPUs; times in ms"
    )
    print(
        table(
            [
                "scenario",
                "trials",
                "gap p50",
                "gap p99",
                "gap max",
                "spawn gap p50",
                "spawn gap p99",
                "old child stop p50",
                "stop p99",
                "overlaps",
            ],
            rows,
        )
    )
    path = write_json(
        "exec_handover",
        {
            "election_timeout": args.election_timeout,
            "backend": args.backend,
            "trials": args.trials,
            "scenarios": scenarios,
        },
    )
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
