"""Large clusters in the simulator: time to elect, and messages per election, for 5 to 101 nodes.

Each trial is one seed of ``almost_raft.testing.Simulation`` (the real
election cores in virtual time, safety checked after every step) at the
default timing (T = 150 ms, T_max = 300 ms, h = 50 ms), every link delaying
each message uniformly by 0.5-1.5 ms:

* cold start: all nodes start at 0; the time until every node agrees on one
  leader (who leads that term), and the messages sent until then;
* leader crash: after the leader has led for a while, it crashes at a random
  point of its heartbeat interval; the time from the crash until the
  survivors agree on a new leader, and the messages sent in between.

Goal: 101 nodes elect within 2 x T_max = 600 ms in 99 % of trials.

    python benchmarks/large_cluster.py            # 5, 11, 51, 101 nodes; 200 trials each
    python benchmarks/large_cluster.py --quick    # 20 trials each
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

from _perf_common import load_average, machine, percentile, table, write_json

from almost_raft.testing import LinkFaults, Simulation, UniformDelay

T = 0.150
T_MAX = 0.300
H = 0.050
GOAL = 2 * T_MAX
GOAL_SHARE = 0.99
GIVE_UP = 10.0  # seconds of virtual time a trial may take before it counts as a failure


def _elected(sim: Simulation, after: int) -> bool:
    # Cheap first: an election was won since *after*; then every running node agrees.
    return len(sim.elections) > after and sim.stable_leader() is not None


def trial(n: int, seed: int) -> dict[str, object]:
    """One cold start and one leader crash of an *n*-node cluster with *seed*."""
    sim = Simulation(
        n,
        seed=f"large/{n}/{seed}",
        election_timeout=T,
        election_timeout_max=T_MAX,
        heartbeat_interval=H,
        link=LinkFaults(delay=UniformDelay(0.0005, 0.0015)),
        transcript_limit=200,
    )
    result: dict[str, object] = {"nodes": n, "seed": seed}
    if not sim.run_until_true(lambda: _elected(sim, 0), GIVE_UP):
        result["cold_s"] = None
        return result
    result["cold_s"] = sim.now
    result["cold_messages"] = sim.stats.sent
    result["cold_rounds"] = sum(1 for _ in sim.elections)
    # Lead for a while, then crash at a random point of a heartbeat interval.
    rng = random.Random(f"crash/{n}/{seed}")
    sim.run_for(0.5 + rng.uniform(0, H))
    leader = sim.stable_leader()
    assert leader is not None, "the leader of the cold start did not last"
    won = len(sim.elections)
    sent = sim.stats.sent
    crashed_at = sim.now
    sim.crash(leader)
    if not sim.run_until_true(lambda: _elected(sim, won), GIVE_UP):
        result["crash_s"] = None
        return result
    result["crash_s"] = sim.now - crashed_at
    result["crash_messages"] = sim.stats.sent - sent
    result["crash_elections"] = len(sim.elections) - won
    result["split_votes"] = sim.split_votes
    return result


def summarize(n: int, trials: Sequence[dict[str, object]], phase: str) -> dict[str, object]:
    times = [float(t[f"{phase}_s"]) for t in trials if t.get(f"{phase}_s") is not None]  # type: ignore[arg-type]
    messages = [float(t[f"{phase}_messages"]) for t in trials if t.get(f"{phase}_messages") is not None]  # type: ignore[arg-type]
    failed = len(trials) - len(times)
    within = sum(1 for x in times if x <= GOAL) / len(trials) if trials else float("nan")
    return {
        "nodes": n,
        "phase": phase,
        "trials": len(trials),
        "failed": failed,
        "p50_ms": 1000 * percentile(times, 50),
        "p99_ms": 1000 * percentile(times, 99),
        "max_ms": 1000 * max(times) if times else float("nan"),
        "within_goal": within,
        "messages_p50": percentile(messages, 50),
        "messages_p99": percentile(messages, 99),
        "messages_per_node_p50": percentile(messages, 50) / n,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 trials per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 11, 51, 101])
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args(argv)
    trials_per_size = 20 if args.quick else args.trials
    load_before = load_average()
    started = time.perf_counter()
    summaries: list[dict[str, object]] = []
    raw: list[dict[str, object]] = []
    for n in args.sizes:
        t0 = time.perf_counter()
        trials = [trial(n, seed) for seed in range(trials_per_size)]
        raw.extend(trials)
        for phase in ("cold", "crash"):
            s = summarize(n, trials, phase)
            s["wall_s"] = time.perf_counter() - t0
            summaries.append(s)
        print(f"{n} nodes: {trials_per_size} trials in {time.perf_counter() - t0:.1f} s", flush=True)
    load_after = load_average()
    rows = [
        [
            s["nodes"],
            "cold start" if s["phase"] == "cold" else "leader crash",
            s["trials"],
            s["p50_ms"],
            s["p99_ms"],
            s["max_ms"],
            f"{100 * float(s['within_goal']):.1f} %",  # type: ignore[arg-type]
            s["messages_p50"],
            s["messages_p99"],
            s["failed"],
        ]
        for s in summaries
    ]
    info = machine()
    print()
    print(
        f"large clusters in the simulator: T={T * 1000:.0f} ms, T_max={T_MAX * 1000:.0f} ms, h={H * 1000:.0f} ms, "
        f"links 0.5-1.5 ms; goal: elected within {GOAL * 1000:.0f} ms in {GOAL_SHARE:.0%} of trials "
        f"(Python {info['python']}, {time.perf_counter() - started:.0f} s)"
    )
    print()
    print(
        table(
            [
                "nodes",
                "phase",
                "trials",
                "p50 ms",
                "p99 ms",
                "max ms",
                f"<= {GOAL * 1000:.0f} ms",
                "messages p50",
                "messages p99",
                "never elected",
            ],
            rows,
        )
    )
    for s in summaries:
        if s["nodes"] == 101:
            ok = float(s["within_goal"]) >= GOAL_SHARE  # type: ignore[arg-type]
            print(f"goal for 101 nodes ({s['phase']}): {'met' if ok else 'NOT met'}")
    data: dict[str, object] = {
        "quick": args.quick,
        "election_timeout": T,
        "election_timeout_max": T_MAX,
        "heartbeat_interval": H,
        "goal_s": GOAL,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "summary": summaries,
        "trials": raw,
    }
    path = write_json("large_cluster", data)
    print(f"\nJSON: {path}")
    return data


if __name__ == "__main__":
    main()
