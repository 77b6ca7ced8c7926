"""Heal time after a real partition: 5 node processes in network namespaces, one cut off and healed.

Five ``python -m almost_raft`` processes (T = 150 ms, h = 50 ms, the CLI's
defaults) run in five network namespaces on one switch (the test harness
``tests/network/_netns.py``; root and ``ip`` needed).  Each trial cuts one
node off by setting its switch port down (no reset, no ICMP: a pulled cable),
waits the isolation time, sets the port up again, and measures the *heal
time*: from the heal until the cut-off node prints the leader that every node
names (``monotonic`` of its ``--json`` line; the same clock as this script's).

Cases: ``follower`` (a follower is cut off: the leader stays) and ``leader``
(the leader is cut off: the others elect a new one, which the old leader must
learn after the heal).  The goal is ``T_max + 2h`` (400 ms here).

``--before REV`` runs the same trials with the nodes of commit *REV* (its
``almost_raft`` extracted with ``git archive`` into a temporary directory),
for a before/after table.  Results go to ``benchmarks/results/heal_time.json``.

    sudo python benchmarks/heal_time.py                         # the fix, 3 trials per isolation
    sudo python benchmarks/heal_time.py --before 0c03aff        # before and after
    sudo python benchmarks/heal_time.py --quick                 # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the harness of tests/network

from _perf_common import load_average, table, write_json

from tests.network._netns import Switch, unavailable
from tests.network._procs import ProcCluster

ROOT = Path(__file__).resolve().parent.parent

T = 0.15
H = 0.05
T_MAX = 2 * T
GOAL = T_MAX + 2 * H
IDS = ["n1", "n2", "n3", "n4", "n5"]


@contextlib.contextmanager
def code_of(rev: str | None) -> Iterator[str]:
    """Run the nodes from commit *rev* (``None``: this working tree); yields a label."""
    if rev is None:
        yield "after (this tree)"
        return
    with tempfile.TemporaryDirectory(prefix="heal-before-") as directory:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "almost_raft"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True)
        here = os.getcwd()
        # ``python -m almost_raft`` imports from its working directory first.
        os.chdir(directory)
        try:
            yield f"before ({rev})"
        finally:
            os.chdir(here)


def trial(cluster: ProcCluster, switch: Switch, case: str, isolation: float, rng: random.Random) -> float | None:
    """One cut and heal; the heal time in seconds (``None``: no agreement within 30 s)."""
    _, leader = cluster.wait_agreed(timeout=30)
    time.sleep(rng.uniform(0.5, 1.0))  # a random phase of the heartbeat
    target = leader if case == "leader" else rng.choice([i for i in IDS if i != leader])
    index = IDS.index(target)
    switch.cut([index])
    time.sleep(isolation)
    node = cluster[target]
    seen = len(node.leader_records())
    healed_at = time.monotonic()
    switch.heal([index])
    try:
        term, agreed = cluster.wait_agreed(timeout=30)
    except AssertionError:
        return None
    for record in node.leader_records()[seen:]:
        if record["monotonic"] >= healed_at and (record["term"], record["leader_id"]) == (term, agreed):
            return float(record["monotonic"]) - healed_at
    return 0.0  # it named the leader before the heal (a cut shorter than its timeout)


def run(args: argparse.Namespace, rev: str | None, workdir: Path) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    results = []
    with code_of(rev) as label:
        switch = Switch(len(IDS))
        if args.arp_retrans_ms is not None:
            for host in switch.hosts:
                sysctl = f"net.ipv4.neigh.eth0.retrans_time_ms={args.arp_retrans_ms}"
                subprocess.run(["ip", "netns", "exec", host, "sysctl", "-qw", sysctl], check=True)
        cluster = ProcCluster(
            workdir / (rev or "after"),
            IDS,
            election_timeout=T,
            heartbeat_interval=H,
            hosts={node_id: switch.address(i) for i, node_id in enumerate(IDS)},
            prefixes={node_id: switch.exec_prefix(i) for i, node_id in enumerate(IDS)},
            extra=["--backend", args.backend],
        )
        cluster.workdir.mkdir(parents=True, exist_ok=True)
        try:
            cluster.start()
            for case in args.cases:
                for isolation in args.isolation:
                    times = []
                    for _ in range(args.trials):
                        heal = trial(cluster, switch, case, isolation, rng)
                        times.append(heal)
                        shown = "no agreement" if heal is None else f"{heal * 1000:.0f} ms"
                        print(f"  {label}: {case} cut off {isolation:g} s, healed in {shown}", flush=True)
                    results.append({"code": label, "case": case, "isolation": isolation, "heal_times": times})
        finally:
            cluster.close()
            switch.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="REV", help="also measure the nodes of this commit")
    parser.add_argument("--trials", type=int, default=3, help="cuts per isolation time (default 3)")
    parser.add_argument("--isolation", type=float, nargs="+", default=[2, 5, 10, 20], help="seconds cut off")
    parser.add_argument("--cases", nargs="+", choices=("follower", "leader"), default=["follower", "leader"])
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--arp-retrans-ms",
        type=int,
        default=None,
        help="set each host's ARP retransmission interval (kernel default 1000 ms), to tell ARP from TCP",
    )
    parser.add_argument("--quick", action="store_true", help="1 trial, isolation 2 and 5 s, followers only")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.isolation, args.cases = 1, [2, 5], ["follower"]
    reason = unavailable()
    if reason is not None:
        sys.exit(f"heal_time: {reason}")
    load_before = load_average()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="heal-time-") as directory:
        for rev in [args.before, None] if args.before else [None]:
            results += run(args, rev, Path(directory))
    rows = []
    for result in results:
        done = [t for t in result["heal_times"] if t is not None]
        rows.append(
            [
                result["code"],
                result["case"],
                result["isolation"],
                len(result["heal_times"]),
                min(done) if done else float("nan"),
                statistics.median(done) if done else float("nan"),
                max(done) if done else float("nan"),
                f"{sum(t <= GOAL for t in done)}/{len(result['heal_times'])}",
            ]
        )
    print()
    arp = "kernel default" if args.arp_retrans_ms is None else f"{args.arp_retrans_ms} ms"
    print(
        f"Heal time in seconds, 5 nodes, T = {T}, T_max = {T_MAX}, h = {H}, ARP retransmission {arp}; "
        f"goal T_max + 2h = {GOAL:.2f} s"
    )
    print(table(["code", "cut off", "isolation s", "trials", "min", "median", "max", "within goal"], rows))
    path = write_json(
        "heal_time",
        {
            "election_timeout": T,
            "election_timeout_max": T_MAX,
            "heartbeat_interval": H,
            "goal": GOAL,
            "backend": args.backend,
            "arp_retrans_ms": args.arp_retrans_ms,
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "results": results,
        },
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
