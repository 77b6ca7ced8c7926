"""The safety evidence at a larger scale: bounded exhaustive exploration, and a long random soak.

Exploration (``almost_raft.testing.explore``) visits every state a 3-node
cluster of real election cores can reach within the bounds and checks the
safety rules in each; the table gives the number of distinct states.  The
soak (``almost_raft.testing.soak``) runs the simulator over many random
configurations and fault schedules with every check on.

    python benchmarks/explore.py                    # the bounds CI uses (about 40 s)
    python benchmarks/explore.py --deep             # larger bounds (about 15 minutes)
    python benchmarks/explore.py --max-term 2 --in-flight 2 --depth 14 --no-pre-vote
    python benchmarks/explore.py --soak 20000000    # 20 million simulated deliveries

Writes ``benchmarks/results/explore.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _perf_common import table, write_json

from almost_raft.testing import ExplorationResult, explore, soak

CI: list[tuple[str, dict[str, Any]]] = [
    ("async, no pre-vote", {"max_term": 2, "max_in_flight": 1, "max_duplicates": 0, "pre_vote": False}),
    ("async, defaults", {"max_term": 1, "max_in_flight": 1, "max_duplicates": 0}),
    ("async, 2 in flight", {"max_term": 3, "max_in_flight": 2, "max_duplicates": 1, "max_depth": 10}),
    ("shared clock", {"clocks": "shared", "max_term": 1, "max_in_flight": 1, "max_duplicates": 0, "max_depth": 14}),
]
DEEP: list[tuple[str, dict[str, Any]]] = [
    ("async, defaults", {"max_term": 2, "max_in_flight": 1, "max_duplicates": 0}),
    ("async, no pre-vote", {"max_term": 3, "max_in_flight": 1, "max_duplicates": 0, "pre_vote": False}),
    ("async, 2 in flight", {"max_term": 3, "max_in_flight": 2, "max_duplicates": 1, "max_depth": 12}),
    (
        "async, restart+transfer",
        {"max_term": 1, "max_in_flight": 1, "max_duplicates": 0, "restarts": 1, "transfers": 1},
    ),
    ("shared clock", {"clocks": "shared", "max_term": 1, "max_in_flight": 1, "max_duplicates": 0}),
]


def _bounds(options: dict[str, Any]) -> str:
    parts = [f"term<={options.get('max_term', 3)}", f"in-flight<={options.get('max_in_flight', 3)}"]
    parts.append(f"dup<={options.get('max_duplicates', 1)}")
    if options.get("max_depth") is not None:
        parts.append(f"depth<={options['max_depth']}")
    for flag in ("restarts", "transfers"):
        if options.get(flag):
            parts.append(f"{flag}={options[flag]}")
    for switch in ("pre_vote", "check_quorum", "split_vote_retry"):
        if options.get(switch) is False:
            parts.append(f"no {switch.replace('_', '-')}")
    return " ".join(parts)


def run_explorations(runs: list[tuple[str, dict[str, Any]]], max_states: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, options in runs:
        result: ExplorationResult = explore(**options, max_states=max_states)
        rows.append(
            {
                "name": name,
                "bounds": _bounds(options),
                "options": options,
                "states": result.states,
                "transitions": result.transitions,
                "depth": result.depth,
                "unexpanded": result.unexpanded,
                "max_term_reached": result.max_term_reached,
                "leaders_elected": result.leaders_elected,
                "complete": result.complete,
                "seconds": round(result.elapsed, 1),
                "violation": None if result.violation is None else result.violation.message,
                "trace": list(result.trace),
            }
        )
        verdict = "ok" if result.violation is None else f"VIOLATION: {result.violation.message}"
        print(f"  {name}: {result.states:,} states in {result.elapsed:.1f} s, {verdict}", flush=True)
        if result.violation is not None:
            print("\n".join(result.trace))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deep", action="store_true", help="the larger bounds")
    parser.add_argument("--max-term", type=int, help="one custom run: expand states while terms stay <= this")
    parser.add_argument("--in-flight", type=int, default=1, help="custom run: messages in flight")
    parser.add_argument("--duplicates", type=int, default=0, help="custom run: duplicates per path")
    parser.add_argument("--depth", type=int, help="custom run: longest path")
    parser.add_argument("--restarts", type=int, default=0, help="custom run: restarts from storage per path")
    parser.add_argument("--transfers", type=int, default=0, help="custom run: leadership transfers per path")
    parser.add_argument("--clocks", choices=("per-node", "shared"), default="per-node")
    parser.add_argument("--no-pre-vote", action="store_true")
    parser.add_argument("--no-check-quorum", action="store_true")
    parser.add_argument("--no-split-vote-retry", action="store_true")
    parser.add_argument("--max-states", type=int, help="stop a run after this many states")
    parser.add_argument("--soak", type=int, metavar="DELIVERIES", help="also run the random soak")
    parser.add_argument("--soak-per-seed", type=int, default=25_000, help="deliveries per soak seed")
    args = parser.parse_args(argv)
    if args.max_term is not None:
        options: dict[str, Any] = {
            "clocks": args.clocks,
            "max_term": args.max_term,
            "max_in_flight": args.in_flight,
            "max_duplicates": args.duplicates,
            "max_depth": args.depth,
            "restarts": args.restarts,
            "transfers": args.transfers,
            "pre_vote": not args.no_pre_vote,
            "check_quorum": not args.no_check_quorum,
            "split_vote_retry": not args.no_split_vote_retry,
        }
        runs = [("custom", options)]
    else:
        runs = DEEP if args.deep else CI
    print("Bounded exhaustive exploration, 3 nodes:")
    started = time.perf_counter()
    rows = run_explorations(runs, args.max_states)
    headers = ["run", "bounds", "states", "transitions", "depth", "max term", "leaders", "complete", "s", "result"]
    print(
        table(
            headers,
            [
                [
                    r["name"],
                    r["bounds"],
                    r["states"],
                    r["transitions"],
                    r["depth"],
                    r["max_term_reached"],
                    r["leaders_elected"],
                    "yes" if r["complete"] else "no",
                    r["seconds"],
                    "ok" if r["violation"] is None else "VIOLATION",
                ]
                for r in rows
            ],
        )
    )
    data: dict[str, object] = {"explorations": rows}
    if args.soak:
        seeds = -(-args.soak // args.soak_per_seed)
        print(f"\nSoak: {args.soak:,} deliveries over {seeds} random configurations ...", flush=True)
        report = soak(list(range(seeds)), args.soak_per_seed)
        soak_row = {
            "seeds": len(report.seeds),
            "deliveries": report.deliveries,
            "ticks": report.ticks,
            "checks": report.checks,
            "faults": report.faults,
            "elections": report.elections,
            "split_votes": report.split_votes,
            "virtual_hours": round(report.virtual_seconds / 3600, 2),
            "seconds": round(report.elapsed, 1),
            "us_per_delivery": round(report.elapsed / max(1, report.deliveries) * 1e6, 1),
        }
        print(table(list(soak_row), [list(soak_row.values())]))
        data["soak"] = soak_row
    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    path = write_json("explore", data)
    print(f"\nwrote {path}")
    if any(r["violation"] is not None for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
