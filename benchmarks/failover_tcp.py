"""Failover over real TCP: 5 node processes on loopback, the leader killed with SIGKILL.

For each timing (150-300 ms with a 75 ms heartbeat, 12-24 ms with 6 ms) and
each event loop (asyncio, trio), it measures:

* failover: SIGKILL the leader at a random point of its heartbeat interval,
  then time until every survivor printed the same new leader (``monotonic``
  field of the nodes' ``--json`` lines, the same clock as this script's);
  the killed node is restarted before the next trial;
* idle CPU per node with a stable leader (``/proc/<pid>/stat``);
* planned handover: SIGUSR1 to the leader (``TransferLeadership``), then time
  until all five print the new leader;
* with ``--measure sigterm``: planned handover by a graceful stop, SIGTERM to
  the leader (``TimeoutNow`` flushed before the process exits), until the four
  survivors print the new leader; the stopped node is restarted before the
  next trial, and the nodes' counters tell whether any election was started
  by a timeout instead.

``--peer pysyncobj`` runs the same failover and idle-CPU experiment against
PySyncObj (``pip install -e '.[bench]'``) with the same timeouts, and the
table shows the ratios.  Results go to ``benchmarks/results/failover_tcp.json``.

    python benchmarks/failover_tcp.py                      # 100 trials each
    python benchmarks/failover_tcp.py --quick              # a smoke run
    python benchmarks/failover_tcp.py --peer pysyncobj --trials 50
    python benchmarks/failover_tcp.py --measure sigterm --trials 50   # planned handover by SIGTERM
    python benchmarks/failover_tcp.py --measure sigterm --before REV  # ... and the nodes of commit REV
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _perf_common import code_of
from _tcp_common import BenchCluster, BenchNode, Record, cpu_seconds, summarize

TIMINGS = {
    "150-300ms": (0.150, 0.300, 0.075),
    "12-24ms": (0.012, 0.024, 0.006),
}


def _settle(cluster: BenchCluster, rng: random.Random) -> None:
    """Let the cluster run stable for a while, ending at a uniformly random phase of the heartbeat."""
    time.sleep(rng.uniform(4, 8) * cluster.heartbeat + rng.uniform(0, cluster.heartbeat))


def measure_idle_cpu(cluster: BenchCluster, seconds: float) -> dict[str, Any]:
    agreed = cluster.wait_agreed(timeout=30)
    if agreed is None:
        return {"error": "no stable leader"}
    term, leader = agreed
    time.sleep(max(0.5, 4 * cluster.max_timeout))
    pids = cluster.pids()
    before = {i: cpu_seconds(p) for i, p in pids.items()}
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    after = {i: cpu_seconds(p) for i, p in pids.items()}
    percent = {i: 100 * (after[i] - before[i]) / elapsed for i in pids}
    stable = cluster.agreed(cluster.ids) == (term, leader)
    followers = [v for i, v in percent.items() if i != leader]
    return {
        "per_node_percent": percent,
        "leader_percent": percent[leader],
        "follower_mean_percent": sum(followers) / len(followers),
        "mean_percent": sum(percent.values()) / len(percent),
        "max_percent": max(percent.values()),
        "stable_throughout": stable,
        "seconds": elapsed,
    }


def measure_handover(cluster: BenchCluster, trials: int, rng: random.Random) -> dict[str, Any]:
    times: list[float] = []
    failures = 0
    unsettled = 0
    done = 0
    while done < trials and unsettled < 10 * trials:
        agreed = cluster.wait_agreed(timeout=10)
        if agreed is None:
            failures += 1
            break
        term, leader = agreed
        _settle(cluster, rng)
        if cluster.agreed(cluster.ids) != agreed:
            unsettled += 1
            continue
        done += 1
        start = time.monotonic()
        cluster.nodes[leader].signal(signal.SIGUSR1)
        new = cluster.wait_agreed(timeout=5, not_leader=leader, min_term=term + 1)
        ends = [] if new is None else [cluster.nodes[i].first_time(*new, since=start) for i in cluster.ids]
        if new is None or None in ends:
            failures += 1
            continue
        times.append(max(e for e in ends if e is not None) - start)
    return {"ms": summarize([t * 1000 for t in times]), "failures": failures, "unsettled_retries": unsettled}


def _stopped_record(node: BenchNode) -> Record | None:
    """The ``stopped`` line of *node*'s current incarnation."""
    for record in reversed(node.records):
        if record.get("event") == "stopped" and record["_inc"] == node.incarnation:
            return record
    return None


def _stop_gracefully(cluster: BenchCluster, node_id: str) -> Record | None:
    node = cluster.nodes[node_id]
    node.signal(signal.SIGTERM)
    assert node.popen is not None
    try:
        node.popen.wait(10)
    except subprocess.TimeoutExpired:
        return None
    cluster.wait_for(lambda: _stopped_record(node), 5)
    return _stopped_record(node)


def measure_sigterm_handover(cluster: BenchCluster, trials: int, rng: random.Random) -> dict[str, Any]:
    """SIGTERM the leader (a graceful stop: it hands over with ``TimeoutNow``); restart it; repeat.

    Latency: from the signal until every survivor printed the new leader.  A
    trial counts as "by TimeoutNow" when the new term is the old one plus one;
    afterwards every node is stopped gracefully and the ``stopped`` lines'
    counters tell how many elections no ``TimeoutNow`` asked for (a node that
    waited out its election timeout), over every incarnation begun after the
    first election (the followers are restarted once before the trials).
    """
    agreed = cluster.wait_agreed(timeout=15)
    if agreed is None:
        return {"error": "no stable leader"}
    term, leader = agreed
    for node_id in cluster.ids:  # fresh counters: the first election was won by a timeout
        if node_id != leader:
            _stop_gracefully(cluster, node_id)
            cluster.start(node_id)
            cluster.wait_agreed(timeout=15)
    first = (leader, cluster.nodes[leader].incarnation)
    times: list[float] = []
    term_jumps = 0
    failures = 0
    stopped: list[Record] = []
    for _ in range(trials):
        agreed = cluster.wait_agreed(timeout=15)
        if agreed is None:
            failures += 1
            break
        term, leader = agreed
        _settle(cluster, rng)
        survivors = [i for i in cluster.ids if i != leader]
        start = time.monotonic()
        cluster.nodes[leader].signal(signal.SIGTERM)
        new = cluster.wait_agreed(survivors, timeout=10, not_leader=leader, min_term=term + 1)
        ends = [] if new is None else [cluster.nodes[i].first_time(*new, since=start) for i in survivors]
        record = _stop_gracefully(cluster, leader)
        if record is not None:
            stopped.append(record)
        if new is None or None in ends:
            failures += 1
        else:
            times.append(max(e for e in ends if e is not None) - start)
            if new[0] != term + 1:
                term_jumps += 1
        cluster.start(leader)
    agreed = cluster.wait_agreed(timeout=15)
    last_leader = agreed[1] if agreed is not None else cluster.ids[0]
    for node_id in [*(i for i in cluster.ids if i != last_leader), last_leader]:
        record = _stop_gracefully(cluster, node_id)
        if record is not None:
            stopped.append(record)
    by_timeout = sum(
        int(r["status"]["elections_started"]) - int(r["status"]["received_by_kind"].get("TimeoutNow", 0))
        for r in stopped
        if (r["node"], r["_inc"]) != first
    )
    return {
        "ms": summarize([t * 1000 for t in times]),
        "failures": failures,
        "term_jumps": term_jumps,
        "elections_by_timeout": by_timeout,
        "incarnations_checked": len(stopped) - sum((r["node"], r["_inc"]) == first for r in stopped),
    }


def measure_failover(cluster: BenchCluster, trials: int, rng: random.Random) -> dict[str, Any]:
    times: list[float] = []
    failures = 0
    restarts_slow = 0
    unsettled = 0
    done = 0
    while done < trials and unsettled < 10 * trials:
        agreed = cluster.wait_agreed(timeout=15)
        if agreed is None:
            failures += 1
            break
        term, leader = agreed
        _settle(cluster, rng)
        if cluster.agreed(cluster.ids) != agreed:
            unsettled += 1  # the leader changed by itself meanwhile: not a clean trial, start over
            continue
        done += 1
        survivors = [i for i in cluster.ids if i != leader]
        victim = cluster.nodes[leader]
        start = time.monotonic()
        victim.signal(signal.SIGKILL)
        new = cluster.wait_agreed(survivors, timeout=10, not_leader=leader, min_term=term + 1)
        victim.reap()
        ends = [] if new is None else [cluster.nodes[i].first_time(*new, since=start) for i in survivors]
        if new is None or None in ends:
            failures += 1
        else:
            times.append(max(e for e in ends if e is not None) - start)
        cluster.start(leader)
        if cluster.wait_agreed(timeout=15) is None:
            restarts_slow += 1
    return {
        "ms": summarize([t * 1000 for t in times]),
        "failures": failures,
        "slow_rejoins": restarts_slow,
        "unsettled_retries": unsettled,
    }


def run_one(
    impl: str, backend: str, timing: str, args: argparse.Namespace, workdir: Path, before: str | None = None
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with code_of(before) as code:
        return _run_cluster(impl, backend, timing, args, workdir, before, rng, code)


def _run_cluster(
    impl: str,
    backend: str,
    timing: str,
    args: argparse.Namespace,
    workdir: Path,
    before: str | None,
    rng: random.Random,
    code: Path,
) -> dict[str, Any]:
    low, high, heartbeat = TIMINGS[timing]
    cluster = BenchCluster(
        impl,
        5,
        min_timeout=low,
        max_timeout=high,
        heartbeat=heartbeat,
        backend=backend,
        workdir=workdir,
        storage=args.storage,
        cwd=code,
    )
    label = f"{impl}/{backend}/{timing}" if impl == "almost_raft" else f"{impl}/{timing}"
    if before is not None:
        label += f" (before: {before})"
    print(f"-- {label}: starting 5 nodes, load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    cluster.start()
    try:
        result: dict[str, Any] = {"impl": impl, "backend": backend, "timing": timing, "before": before}
        result["load_average_1m"] = os.getloadavg()[0]
        if "idle" in args.measure:
            result["idle_cpu"] = measure_idle_cpu(cluster, args.idle_seconds)
        if impl == "almost_raft" and "handover" in args.measure:
            result["handover"] = measure_handover(cluster, args.handover_trials, rng)
        if impl == "almost_raft" and "sigterm" in args.measure:
            result["sigterm"] = measure_sigterm_handover(cluster, args.handover_trials, rng)
            st = result["sigterm"]
            print(
                f"   SIGTERM handover {st.get('ms')}, term jumps {st.get('term_jumps')}, "
                f"elections by timeout {st.get('elections_by_timeout')}",
                file=sys.stderr,
                flush=True,
            )
        if "failover" in args.measure:
            result["failover"] = measure_failover(cluster, args.trials, rng)
            fo = result["failover"]["ms"]
            print(
                f"   failover median {fo.get('median', float('nan')):.1f} ms, max {fo.get('max', float('nan')):.1f} ms,"
                f" failures {result['failover']['failures']}",
                file=sys.stderr,
                flush=True,
            )
        return result
    finally:
        cluster.close()


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'impl':<12}{'loop':<8}{'timing':<11}{'min':>7}{'median':>8}{'p90':>7}{'p99':>7}{'max':>7}{'mean':>7}"
        f"{'fail':>5}{'cpu%':>7}{'cpu%L':>7}{'hand p50':>9}{'hand p99':>9}"
    )
    print("\nfailover after SIGKILL of the leader, ms (cpu%: idle mean per node, cpu%L: the leader)")
    print(header)
    print("-" * len(header))
    for r in results:
        fo = r.get("failover", {"ms": {}, "failures": "-"})["ms"]
        cpu = r.get("idle_cpu", {})
        hand = r.get("handover", {}).get("ms", {})
        print(
            f"{r['impl']:<12}{(r['backend'] if r['impl'] == 'almost_raft' else '-'):<8}{r['timing']:<11}"
            f"{_fmt(fo.get('min')):>7}{_fmt(fo.get('median')):>8}{_fmt(fo.get('p90')):>7}{_fmt(fo.get('p99')):>7}"
            f"{_fmt(fo.get('max')):>7}{_fmt(fo.get('mean')):>7}{r.get('failover', {}).get('failures', '-'):>5}"
            f"{_fmt(cpu.get('mean_percent')):>7}{_fmt(cpu.get('leader_percent')):>7}"
            f"{_fmt(hand.get('median')):>9}{_fmt(hand.get('p99')):>9}"
        )
    sigterm = [r for r in results if "sigterm" in r]
    if sigterm:
        print("\nplanned handover after SIGTERM of the leader (graceful stop: TimeoutNow), ms")
        print(
            f"{'loop':<26}{'timing':<11}{'n':>4}{'p50':>7}{'p90':>7}{'p99':>7}{'max':>7}{'fail':>5}{'jumps':>6}{'by T':>5}"
        )
        for r in sigterm:
            st = r["sigterm"]
            ms = st.get("ms", {})
            loop = r["backend"] if not r.get("before") else f"{r['backend']} (before {r['before']})"
            print(
                f"{loop:<26}{r['timing']:<11}{ms.get('n', 0):>4}{_fmt(ms.get('median')):>7}"
                f"{_fmt(ms.get('p90')):>7}{_fmt(ms.get('p99')):>7}{_fmt(ms.get('max')):>7}{st.get('failures', '-'):>5}"
                f"{st.get('term_jumps', '-'):>6}{st.get('elections_by_timeout', '-'):>5}"
            )
        print("(jumps: trials whose new term was not the old one plus one; by T: elections no TimeoutNow asked for)")
    peers = {r["timing"]: r for r in results if r["impl"] == "pysyncobj" and "failover" in r}
    if peers:
        print("\nratios almost_raft / pysyncobj (below 1: almost_raft is faster or leaner)")
        print(f"{'loop':<8}{'timing':<11}{'median':>8}{'p99':>7}{'max':>7}{'mean':>7}{'cpu':>7}")
        for r in results:
            peer = peers.get(r["timing"])
            if r["impl"] != "almost_raft" or peer is None or "failover" not in r:
                continue
            ours, theirs = r["failover"]["ms"], peer["failover"]["ms"]
            ratio = {
                k: ours[k] / theirs[k] if theirs.get(k) and k in ours else None
                for k in ("median", "p99", "max", "mean")
            }
            cpu_a, cpu_b = r["idle_cpu"].get("mean_percent"), peer["idle_cpu"].get("mean_percent")
            cpu_ratio = cpu_a / cpu_b if cpu_a is not None and cpu_b else None
            print(
                f"{r['backend']:<8}{r['timing']:<11}{_fmt(ratio['median']):>8}{_fmt(ratio['p99']):>7}"
                f"{_fmt(ratio['max']):>7}{_fmt(ratio['mean']):>7}{_fmt(cpu_ratio):>7}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100, help="failover trials per configuration (default 100)")
    parser.add_argument("--handover-trials", type=int, default=None, help="planned hand-overs (default: --trials)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 trials, 1 s idle, one loop per timing")
    parser.add_argument("--peer", choices=("pysyncobj",), help="also run PySyncObj with the same timeouts")
    parser.add_argument("--timings", default=",".join(TIMINGS), help=f"comma-separated, of {list(TIMINGS)}")
    parser.add_argument("--backends", default="asyncio,trio", help="comma-separated: asyncio,trio")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="window of the idle CPU measurement")
    parser.add_argument("--storage", action="store_true", help="almost_raft nodes keep term and vote in a file")
    parser.add_argument("--seed", type=int, default=1, help="seeds the kill times")
    parser.add_argument("--before", metavar="REV", help="also run the almost_raft nodes of this commit (same sitting)")
    parser.add_argument(
        "--measure",
        default="idle,handover,failover",
        help="comma-separated, of idle, handover (SIGUSR1), sigterm (graceful stop of the leader), failover (SIGKILL)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "failover_tcp.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials = min(args.trials, 5)
        args.idle_seconds = min(args.idle_seconds, 1.0)
        if "--backends" not in " ".join(argv if argv is not None else sys.argv):
            args.backends = "asyncio"
    if args.handover_trials is None:
        args.handover_trials = args.trials
    args.measure = {m for m in args.measure.split(",") if m}
    if not args.measure <= {"idle", "handover", "sigterm", "failover"}:
        parser.error(f"unknown --measure {sorted(args.measure)}")
    timings = [t for t in args.timings.split(",") if t]
    backends = [b for b in args.backends.split(",") if b]
    for timing in timings:
        if timing not in TIMINGS:
            parser.error(f"unknown timing {timing!r}")
    if args.peer == "pysyncobj":
        try:
            import pysyncobj  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
        except ImportError:
            parser.error("--peer pysyncobj needs PySyncObj: pip install -e '.[bench]'")

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="failover_tcp-") as tmp:
        workdir = Path(tmp)
        for timing in timings:
            for backend in backends:
                if args.before:
                    results.append(run_one("almost_raft", backend, timing, args, workdir, args.before))
                results.append(run_one("almost_raft", backend, timing, args, workdir))
            if args.peer == "pysyncobj":
                results.append(run_one("pysyncobj", "threads", timing, args, workdir))
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "failover_tcp",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "trials": args.trials,
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
