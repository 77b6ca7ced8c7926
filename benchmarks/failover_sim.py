"""Figure 16 of the Raft paper, in the simulator: how long a cluster is without a leader after a crash.

The experiment of Ongaro & Ousterhout (2014), section 9.3: five nodes; the
leader crashes at a uniformly random point of its heartbeat interval (the
heartbeat interval is half the minimum election timeout); the failover time
runs from the crash until every survivor knows the same new leader.  One
configuration per election-timeout range, 1000 trials each, one-way delays
drawn uniformly from ``1 ms +- 10 %``.  The simulator runs the real election
core in virtual time, so the figures are the protocol's, not the machine's.

For each configuration the table shows the failover distribution, the
number of split votes (terms in which two or more nodes stood and nobody
won) and a lower bound computed per trial for the same setup: the time from
the crash until the first survivor's timer fires (its timeout since the last
heartbeat it received), plus the messages any election needs on the fastest
links (pre-vote and vote round trips, then the winner's heartbeat to the
survivors; without pre-vote one round trip fewer).  ``median/bound`` and
``p99/bound`` compare the measured median and 99th percentile with the
bound's.

Variants:

* ``almost_raft``: the library's defaults (pre-vote, the split-vote rule and
  the designated successor on): the successor the leader named stands
  exactly ``T`` after the last heartbeat it received.
* ``notice``: the same with a transport that reports closed connections
  (``PeerDisconnected``): every survivor learns of the crash one link delay
  after it, as over TCP when the leader's process dies, and the successor
  asks for pre-votes at once (voters answer when their windows end).
* ``randomized``: the successor off: every survivor waits for its own
  random timeout (the previous releases' behaviour).
* ``no-split-retry``: ``randomized`` without the split-vote rule (a lost
  round waits a fresh timeout).
* ``paper``: no pre-vote, no split-vote rule, no successor: closest to the
  Raft the paper measured.

With the successor, a failover cannot be shorter than the survivors'
stickiness windows allow (their last heartbeat plus ``T``) plus the messages
an election needs after them: the bound column says so for those variants
(``_bound``).  The summary line compares each median with the ``randomized``
bound of the same range (the goal of issue 13: at most 0.8 x).

    python benchmarks/failover_sim.py                  # everything: 10 ranges x 5 variants x 1000 trials
    python benchmarks/failover_sim.py --trials 1000 --ranges 150-300 --variants almost_raft,notice,randomized
    python benchmarks/failover_sim.py --trials 200 --ranges 150-300,12-24
    python benchmarks/failover_sim.py --no-plot        # no PNG (also when matplotlib is missing)

Writes ``benchmarks/results/failover_sim.json`` and ``failover_sim.png``
(a cumulative distribution like the paper's figure; needs matplotlib, the
``bench`` extra).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _perf_common import RESULTS_DIR, percentile, table, write_json

from almost_raft import Role
from almost_raft.testing import LinkFaults, Simulation, UniformDelay

RANGES = ("150-150", "150-151", "150-155", "150-175", "150-200", "150-300", "12-24", "25-50", "50-100", "100-200")
VARIANTS: dict[str, dict[str, bool]] = {
    "almost_raft": {"pre_vote": True, "split_vote_retry": True, "successor": True},
    "notice": {"pre_vote": True, "split_vote_retry": True, "successor": True, "disconnect_notice": True},
    "randomized": {"pre_vote": True, "split_vote_retry": True, "successor": False},
    "no-split-retry": {"pre_vote": True, "split_vote_retry": False, "successor": False},
    "paper": {"pre_vote": False, "split_vote_retry": False, "successor": False},
}
# The paper's own figures (section 9.3 and Figure 16).
PAPER = {
    ("150-155", "median"): 287.0,
    ("150-200", "max"): 513.0,
    ("12-24", "mean"): 35.0,
    ("12-24", "max"): 152.0,
}


def _range(name: str) -> tuple[float, float]:
    low, high = name.split("-")
    return float(low) / 1000, float(high) / 1000


def one_trial(
    timeouts: str, variant: str, seed: str, delay: float, spread: float, give_up: float
) -> tuple[float, float, int]:
    """One crash: (failover seconds or inf, lower bound seconds, split votes)."""
    low, high = _range(timeouts)
    heartbeat = low / 2
    switches = VARIANTS[variant]
    pre_vote = switches["pre_vote"]
    d_min, d_max = delay * (1 - spread), delay * (1 + spread)
    sim = Simulation(
        5,
        seed=seed,
        election_timeout=low,
        election_timeout_max=high,
        heartbeat_interval=heartbeat,
        link=LinkFaults(delay=UniformDelay(d_min, d_max)),
        transcript_limit=64,
        pre_vote=pre_vote,
        split_vote_retry=switches["split_vote_retry"],
        successor=switches["successor"],
        disconnect_notice=switches.get("disconnect_notice", False),
    )
    # Start from a stable leader.  With equal timeouts and no split-vote rule
    # a cold start can split forever, so the first election gets a nudge:
    # one node's clock runs fast until somebody leads.
    sim.set_clock_rate("a", 1.05)
    if not sim.run_until_true(lambda: sim.stable_leader() is not None, timeout=60 * high):
        raise RuntimeError(f"no first leader (seed {seed!r})")
    sim.set_clock_rate("a", 1.0)
    sim.run_for(4 * heartbeat)
    leader = sim.stable_leader()
    assert leader is not None
    # Crash at a uniformly random point of the heartbeat interval.
    next_heartbeat = sim.core(leader).next_deadline
    crash_at = next_heartbeat + random.Random(f"{seed}/crash").uniform(0.0, heartbeat)
    sim.run_until(crash_at)
    sim.crash(leader)
    survivors = [i for i in sim.node_ids if i != leader]
    splits = sim.split_votes
    # The earliest a survivor's stickiness window ends: no vote before it.
    window_end = min(sim.node(i).true(sim.core(i).last_leader_contact + low) for i in survivors)
    # The bound: the first survivor's timer, then the fastest possible election.
    sim.run_until_true(lambda: any(sim.core(i).role is Role.CANDIDATE for i in survivors), timeout=2 * high)
    bound = _bound(sim.now, window_end, crash_at, d_min, pre_vote=pre_vote)
    done = sim.run_until_true(
        lambda: sim.stable_leader(survivors) is not None, timeout=max(0.0, give_up - (sim.now - crash_at))
    )
    failover = sim.now - crash_at if done else math.inf
    return failover, bound, sim.split_votes - splits


def _bound(first_candidate: float, window_end: float, crash_at: float, d_min: float, *, pre_vote: bool) -> float:
    """The shortest failover this trial allows: when an election can start, plus the messages it needs.

    A survivor stands when its timer fires (at ``first_candidate``); then it
    needs a pre-vote round trip (with pre-vote), a vote round trip and the
    winner's heartbeat, each one-way hop at least ``d_min``.  A successor
    told of the crash asks for pre-votes before any window ends; voters answer
    when their window ends, so the bound is the earliest window end plus the
    answer, the vote round trip and the heartbeat.
    """
    if pre_vote and first_candidate < window_end:
        return (window_end - crash_at) + 4 * d_min
    return (first_candidate - crash_at) + (5 if pre_vote else 3) * d_min


def run_configuration(
    timeouts: str, variant: str, trials: int, seed: int, delay: float, spread: float, give_up: float
) -> dict[str, Any]:
    """All trials of one (timeout range, variant)."""
    started = time.perf_counter()
    failovers: list[float] = []
    bounds: list[float] = []
    splits: list[int] = []
    for trial in range(trials):
        f, b, s = one_trial(timeouts, variant, f"{seed}/{timeouts}/{trial}", delay, spread, give_up)
        failovers.append(f)
        bounds.append(b)
        splits.append(s)
    return {
        "timeouts_ms": timeouts,
        "variant": variant,
        "trials": trials,
        "failover_ms": [round(f * 1e3, 4) if math.isfinite(f) else None for f in failovers],
        "bound_ms": [round(b * 1e3, 4) for b in bounds],
        "split_votes": splits,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def summarize(config: dict[str, Any]) -> dict[str, Any]:
    """The figures the table shows (milliseconds)."""
    values = [math.inf if f is None else f for f in config["failover_ms"]]
    finite = [v for v in values if math.isfinite(v)]
    bounds = config["bound_ms"]
    median_bound = statistics.median(bounds)
    p99_bound = percentile(bounds, 99)
    return {
        "min": min(values),
        "median": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(finite) if len(finite) == len(values) else math.inf,
        "no_leader": len(values) - len(finite),
        "split_votes": sum(config["split_votes"]),
        "trials_with_split": sum(1 for s in config["split_votes"] if s),
        "bound_median": median_bound,
        "bound_p99": p99_bound,
        "median_over_bound": percentile(values, 50) / median_bound,
        "p99_over_bound_p99": percentile(values, 99) / p99_bound,
    }


def plot(configs: list[dict[str, Any]], path: Path) -> bool:
    """Draw the cumulative distributions like the paper's Figure 16; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    styles = {"almost_raft": "-", "no-split-retry": "--", "paper": ":"}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 9))
    panels = [
        (top, ("150-150", "150-151", "150-155", "150-175", "150-200", "150-300"), True),
        (bottom, ("12-24", "25-50", "50-100", "100-200", "150-300"), False),
    ]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, ranges, log in panels:
        for n, timeouts in enumerate(ranges):
            for config in configs:
                if config["timeouts_ms"] != timeouts:
                    continue
                values = sorted(math.inf if f is None else f for f in config["failover_ms"])
                ys = [100 * (k + 1) / len(values) for k in range(len(values))]
                xs = [v if math.isfinite(v) else float("nan") for v in values]
                axis.step(
                    xs,
                    ys,
                    where="post",
                    linestyle=styles.get(config["variant"], "-"),
                    color=colors[n % len(colors)],
                    label=f"{timeouts} ms ({config['variant']})",
                )
        axis.set_ylabel("cumulative percent")
        axis.set_ylim(0, 100)
        if log:
            axis.set_xscale("log")
            axis.set_xlim(50, 10_000)
        else:
            axis.set_xlim(0, 600)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=6, ncol=2)
    bottom.set_xlabel("time without leader (ms)")
    top.set_title("Failover after a leader crash: 5 nodes, simulated, 1 ms +- 10 % one-way delays")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials per configuration (default 1000)")
    parser.add_argument("--ranges", default=",".join(RANGES), help="election timeout ranges in ms, comma separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--delay", type=float, default=0.001, help="mean one-way delay in seconds (default 1 ms)")
    parser.add_argument("--spread", type=float, default=0.1, help="delays are drawn from delay * (1 +- spread)")
    parser.add_argument(
        "--give-up", type=float, default=10.0, help="virtual seconds before a trial counts as no leader"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    args = parser.parse_args(argv)
    ranges = [r for r in args.ranges.split(",") if r]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}")
    tasks = [(r, v) for v in variants for r in ranges]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [
            pool.submit(run_configuration, r, v, args.trials, args.seed, args.delay, args.spread, args.give_up)
            for r, v in tasks
        ]
        configs = [f.result() for f in futures]
    elapsed = time.perf_counter() - started
    headers = [
        "variant",
        "timeouts ms",
        "min",
        "median",
        "p90",
        "p99",
        "max",
        "mean",
        "split votes",
        "bound median",
        "bound p99",
        "median/bound",
        "p99/bound p99",
    ]
    rows = []
    for config in configs:
        s = config["summary"] = summarize(config)
        rows.append(
            [
                config["variant"],
                config["timeouts_ms"],
                s["min"],
                s["median"],
                s["p90"],
                s["p99"],
                s["max"],
                s["mean"],
                s["split_votes"],
                s["bound_median"],
                s["bound_p99"],
                s["median_over_bound"],
                s["p99_over_bound_p99"],
            ]
        )
    print(f"Failover after a leader crash (ms), {args.trials} trials each, 5 nodes, simulated:")
    print(table(headers, rows))
    goal_rows = []
    for base in configs:
        if base["variant"] != "randomized":
            continue
        b = base["summary"]
        for config in configs:
            if config["timeouts_ms"] != base["timeouts_ms"] or config["variant"] not in ("almost_raft", "notice"):
                continue
            s = config["summary"]
            goal_rows.append(
                [
                    config["variant"],
                    config["timeouts_ms"],
                    s["median"],
                    b["bound_median"],
                    s["median"] / b["bound_median"],
                    "met" if s["median"] <= 0.8 * b["bound_median"] else "not met",
                    s["p99"],
                    b["median"],
                    "met" if s["p99"] <= b["median"] else "not met",
                ]
            )
    if goal_rows:
        print("\nAgainst the randomized failover (issue 13: median <= 0.8 x its bound, p99 <= its median), ms:")
        headers2 = [
            "variant",
            "timeouts ms",
            "median",
            "randomized bound median",
            "ratio",
            "median goal",
            "p99",
            "randomized median",
            "p99 goal",
        ]
        print(table(headers2, goal_rows))
    paper_rows = []
    for (timeouts, stat), theirs in PAPER.items():
        for config in configs:
            if config["timeouts_ms"] == timeouts:
                paper_rows.append([timeouts, stat, theirs, config["variant"], config["summary"][stat]])
    if paper_rows:
        print("\nThe paper's figures beside ours (ms):")
        print(table(["timeouts ms", "statistic", "paper", "variant", "simulated"], paper_rows))
    png = RESULTS_DIR / "failover_sim.png"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    drawn = False if args.no_plot else plot(configs, png)
    path = write_json(
        "failover_sim",
        {
            "trials": args.trials,
            "delay_s": args.delay,
            "spread": args.spread,
            "give_up_s": args.give_up,
            "seed": args.seed,
            "elapsed_s": round(elapsed, 1),
            "paper": [{"timeouts_ms": t, "statistic": s, "ms": v} for (t, s), v in PAPER.items()],
            "configs": configs,
        },
    )
    print(f"\nwrote {path}" + (f" and {png}" if drawn else " (no PNG: matplotlib missing or --no-plot)"))
    print(f"{elapsed:.0f} s wall clock")


if __name__ == "__main__":
    main()
