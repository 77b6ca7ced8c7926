"""Many independent 3-node election groups in one process (one group per shard, as in multi-raft).

``G`` groups of three nodes each run their election over one in-memory
network (``MemoryNetwork``) in one process, either through one
``ElectionHost`` (``--driver host``, the default here: one task steps every
core, messages go straight into it) or with one ``raft_election`` task per
node (``--driver default``: the path every other user runs, messages through
each node's ``control``), with a 100 ms heartbeat and a
300 ms election timeout (timeouts drawn from [300, 600) ms).  After every
group has elected a leader and settled, the benchmark watches for
``--duration`` seconds and reports:

* CPU: process CPU time over the window, as a share of one core;
* memory per node: resident memory grown from before building the groups to
  after they all elected, divided by the number of nodes;
* heartbeat jitter: the gaps between two heartbeats arriving at a follower,
  for the followers of up to ``--sample`` groups (tapped at their ``control``);
* loop lag: how late a 10 ms sleep wakes up, sampled all along the window;
* spurious elections: elections started (term raised) and leader changes in
  the window; nothing is faulted, so every one of them is spurious.  Pre-votes
  started (an election timer that fired, harmless when refused) are counted too.

With ``--starve SECONDS`` the process is starved once, ``--starve-at``
seconds into the window: the event loop is blocked (``time.sleep``) for that
long, as a process that gets no CPU would be.  Every timer is then late by up
to that much.  The window is then sampled every half second: how many groups
changed leader (view ``(term, leader)``) and how many elections started in
each second after the starvation ended, and when the last change happened.
The goal (issue 13, overload): back to zero leader changes within 10 seconds.

Each (backend, G) runs in a fresh process so that its CPU and memory figures
are its own.  The goal: 1,000 groups (3,000 nodes) on one core with zero
spurious elections.

    python benchmarks/many_groups.py                      # G = 10, 100, 1000, 10000; 60 s each; asyncio and trio
    python benchmarks/many_groups.py --quick              # asyncio, G = 10, 100; 2 s each
    python benchmarks/many_groups.py --groups 1000 --duration 20 --backends asyncio
    python benchmarks/many_groups.py --groups 100 --duration 20 --backends asyncio --driver default
    python benchmarks/many_groups.py --groups 1000 --duration 30 --backends asyncio --starve 5
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
from _perf_common import load_average, machine, percentile, process_cpu, rss_bytes, table, write_json
from anyio.streams.memory import MemoryObjectSendStream

from almost_raft import Heartbeat, Message, RaftElectionState, Role, raft_election
from almost_raft._messages import ControlMessage, NodeId
from almost_raft.host import ElectionHost
from almost_raft.transports.memory import MemoryNetwork

HEARTBEAT = 0.100
TIMEOUT = 0.300
GOAL_GROUPS = 1000


class _Taps:
    """Records when heartbeats reach the sampled nodes, wrapping ``MemoryNetwork.deliver_nowait``.

    Every message goes through ``deliver_nowait`` the moment it is handed
    over (with no latency, the moment it arrives); the wrapper costs each
    message one call and one dict lookup.
    """

    def __init__(self, network: MemoryNetwork, sampled: set[NodeId]) -> None:
        self.arrivals: dict[NodeId, list[float]] = {node_id: [] for node_id in sampled}
        deliver = network.deliver_nowait
        clock = anyio.current_time
        arrivals = self.arrivals

        def tapped(sender_id: NodeId, peer_id: NodeId, message: Message) -> None:
            if type(message) is Heartbeat:
                times = arrivals.get(peer_id)
                if times is not None:
                    times.append(clock())
            deliver(sender_id, peer_id, message)

        network.deliver_nowait = tapped  # type: ignore[method-assign]


def _agreed(states: Sequence[RaftElectionState]) -> tuple[int, object] | None:
    """``(term, leader)`` when exactly one node of the group leads and the others follow it."""
    leaders = [s for s in states if s.role is Role.LEADER]
    if len(leaders) != 1:
        return None
    leader = leaders[0]
    if any(s.leader_id != leader.self_id or s.term != leader.term for s in states):
        return None
    return (leader.term, leader.self_id)


def _elections(all_states: Sequence[Sequence[RaftElectionState]]) -> tuple[int, int]:
    """(elections started, pre-votes started) over every node, read from the cores (``status()`` costs more)."""
    cores = [s.core for states in all_states for s in states if s.core is not None]
    return sum(c.counters.elections_started for c in cores), sum(c.counters.pre_votes_started for c in cores)


async def _lag_probe(lags: list[float], stop: anyio.Event) -> None:
    while not stop.is_set():
        start = anyio.current_time()
        await anyio.sleep(0.010)
        lags.append(anyio.current_time() - start - 0.010)


async def _starve_and_watch(
    all_states: Sequence[Sequence[RaftElectionState]],
    start_at: float,
    seconds: float,
    timeline: list[tuple[float, int, int]],
    stop: anyio.Event,
) -> None:
    """Block the event loop for *seconds* at *start_at*, then sample the groups every half second.

    Appends ``(seconds since the starvation ended, groups whose leader view
    changed since the last sample, elections started since the last sample)``
    to *timeline*; the first entry (time 0) compares with the views before
    the starvation.
    """
    await anyio.sleep_until(start_at)
    views = [_agreed(states) for states in all_states]
    started, _ = _elections(all_states)
    time.sleep(seconds)  # noqa: ASYNC251 - the point: nothing else runs meanwhile
    ended = anyio.current_time()
    while not stop.is_set():
        now_views = [_agreed(states) for states in all_states]
        now_started, _ = _elections(all_states)
        changed = sum(1 for a, b in zip(views, now_views, strict=True) if a != b)
        timeline.append((anyio.current_time() - ended, changed, now_started - started))
        views, started = now_views, now_started
        await anyio.sleep(0.5)


async def run_groups(
    groups: int,
    duration: float,
    sample: int,
    seed: int,
    hosted: bool = True,
    freeze: bool = False,
    starve: float = 0.0,
    starve_at: float = 5.0,
) -> dict[str, object]:
    """Run *groups* groups, wait for them to elect, and watch them for *duration* seconds.

    With *hosted*, one ``ElectionHost`` runs every election and each node is
    registered on the network with the host, so messages reach it without a
    task switch; otherwise each node runs ``raft_election`` and messages go
    through its ``control`` stream.
    """
    host = ElectionHost() if hosted else None
    gc.collect()
    rss_before = rss_bytes()
    network = MemoryNetwork()
    rng = random.Random(seed)
    all_states: list[list[RaftElectionState]] = []
    controls: list[MemoryObjectSendStream[ControlMessage | Message]] = []
    step = max(1, groups // max(1, sample))
    sampled: set[NodeId] = set()
    build_start = time.perf_counter()
    for g in range(groups):
        ids = [f"g{g}n{i}" for i in range(3)]
        states = []
        for node_id in ids:
            peers = [network.node(p, sender_id=node_id) for p in ids if p != node_id]
            state, control = RaftElectionState.init(
                node_id,
                election_timeout=TIMEOUT,
                heartbeat_interval=HEARTBEAT,
                message_timeout=HEARTBEAT,
                nodes=peers,
                min_nodes=3,
                rng=random.Random(rng.random()),
            )
            if g % step == 0 and len(sampled) < 3 * sample:
                sampled.add(node_id)
            if host is None:
                network.register(node_id, control)
            else:
                network.register(node_id, control, host=host, state=state)
            controls.append(control)
            states.append(state)
        all_states.append(states)
    taps = _Taps(network, sampled)
    result: dict[str, object] = {"groups": groups, "nodes": 3 * groups, "hosted": hosted, "gc_freeze": freeze}
    async with anyio.create_task_group() as tg:
        if host is not None:
            await tg.start(host.run)
        for states in all_states:
            for state in states:
                tg.start_soon(raft_election if host is None else host.run_election, state)
        started = time.perf_counter()
        result["build_s"] = started - build_start
        # Wait until every group agrees on a leader (cold start).
        deadline = started + 30 + groups / 200
        pending = list(range(groups))
        while pending:
            await anyio.sleep(0.05)
            pending = [g for g in pending if _agreed(all_states[g]) is None]
            if time.perf_counter() > deadline:
                break
        result["elected_all"] = not pending
        result["cold_start_s"] = time.perf_counter() - started
        if pending:
            result["not_elected"] = len(pending)
            tg.cancel_scope.cancel()
            for control in controls:
                control.close()
            return result
        await anyio.sleep(2 * TIMEOUT)  # let the first rounds settle
        gc.collect()  # (stalls the loop: done before the window, with time to recover)
        if freeze:
            # Long-lived objects out of the collector's way: a full collection
            # of thousands of nodes' state otherwise stalls the loop for 100+ ms.
            gc.freeze()
        rss_after = rss_bytes()
        await anyio.sleep(2 * TIMEOUT)
        # Cheap reads only from here on: the benchmark must not stall the loop itself.
        views = [_agreed(states) for states in all_states]
        started_before, pre_before = _elections(all_states)
        delivered_before = network.delivered
        lags: list[float] = []
        stop = anyio.Event()
        tg.start_soon(_lag_probe, lags, stop)
        window_start = anyio.current_time()
        cpu0, wall0 = process_cpu(), time.perf_counter()
        timeline: list[tuple[float, int, int]] = []
        if starve > 0:
            tg.start_soon(_starve_and_watch, all_states, window_start + starve_at, starve, timeline, stop)
        await anyio.sleep(duration)
        cpu1, wall1 = process_cpu(), time.perf_counter()
        window_end = anyio.current_time()
        stop.set()
        views_after = [_agreed(states) for states in all_states]
        started_after, pre_after = _elections(all_states)
        delivered_after = network.delivered
        tg.cancel_scope.cancel()
    for control in controls:
        control.close()
    gaps: list[float] = []
    for times in taps.arrivals.values():
        arrivals = [t for t in times if window_start <= t <= window_end]
        gaps.extend(b - a for a, b in itertools.pairwise(arrivals))
    wall = wall1 - wall0
    changed = sum(1 for a, b in zip(views, views_after, strict=True) if a != b)
    result.update(
        {
            "duration_s": wall,
            # CPU over the window on the event loop's clock: on real time the
            # share of one core; on a virtual clock (trio's MockClock) the share
            # of one core the same load would need in real time.
            "cpu_share": (cpu1 - cpu0) / (window_end - window_start),
            "window_s": window_end - window_start,
            "mem_per_node_kib": (rss_after - rss_before) / (3 * groups) / 1024,
            "rss_mib": rss_after / 2**20,
            "messages_per_s": (delivered_after - delivered_before) / wall,
            "heartbeat_gaps": len(gaps),
            "gap_p50_ms": 1000 * percentile(gaps, 50),
            "gap_p99_ms": 1000 * percentile(gaps, 99),
            "gap_max_ms": 1000 * max(gaps) if gaps else math.nan,
            "jitter_p99_ms": 1000 * (percentile(gaps, 99) - HEARTBEAT) if gaps else math.nan,
            "loop_lag_p99_ms": 1000 * percentile(lags, 99),
            "loop_lag_max_ms": 1000 * max(lags) if lags else math.nan,
            "elections_started": started_after - started_before,
            "pre_votes_started": pre_after - pre_before,
            "leader_changes": changed,
        }
    )
    result["spurious_elections"] = int(result["elections_started"]) + changed  # type: ignore[call-overload]
    if starve > 0:
        result.update(_starvation_summary(timeline, starve))
    return result


def _starvation_summary(timeline: list[tuple[float, int, int]], starve: float) -> dict[str, object]:
    """What happened after the starvation: changes per second, and when the last one was seen."""
    changes = sum(c for _, c, _ in timeline)
    elections = sum(e for _, _, e in timeline)
    busy = [t for t, c, e in timeline if c or e]
    per_second: dict[int, list[int]] = {}
    for t, c, e in timeline:
        bucket = per_second.setdefault(int(t), [0, 0])
        bucket[0] += c
        bucket[1] += e
    watched = timeline[-1][0] if timeline else 0.0
    return {
        "starve_s": starve,
        "starve_changes": changes,
        "starve_elections": elections,
        # When the last sample with a leader change or an election was taken,
        # counted from the end of the starvation (0.0: none at all).
        "starve_last_change_s": max(busy) if busy else 0.0,
        "starve_watched_s": watched,
        "starve_per_second": [[k, *v] for k, v in sorted(per_second.items())],
    }


def run_one(args: argparse.Namespace) -> None:
    """Child process: one backend, one G; prints one JSON line."""
    result = anyio.run(
        run_groups,
        args.groups[0],
        args.duration,
        args.sample,
        args.seed,
        args.driver == "host",
        args.gc_freeze,
        args.starve,
        args.starve_at,
        backend=args.backend[0],
    )
    result["backend"] = args.backend[0]
    print(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="asyncio, G = 10, 100 for 2 s each")
    parser.add_argument("--groups", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds watched after the groups settled")
    parser.add_argument("--backends", "--backend", dest="backend", nargs="+", default=["asyncio", "trio"])
    parser.add_argument("--sample", type=int, default=200, help="groups whose heartbeats are timed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once the groups have elected (no full collections of them)",
    )
    parser.add_argument(
        "--driver",
        choices=["host", "default"],
        default="host",
        help="host: one ElectionHost runs every election; default: one raft_election task per node",
    )
    parser.add_argument(
        "--starve",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="block the event loop this long once, --starve-at seconds into the window (overload recovery)",
    )
    parser.add_argument("--starve-at", type=float, default=5.0, help="seconds into the window (default 5)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(args)
        return {}
    if args.quick:
        args.groups, args.duration, args.backend = [10, 100], 2.0, ["asyncio"]
    load_before = load_average()
    results: list[dict[str, object]] = []
    for backend in args.backend:
        for groups in args.groups:
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--one",
                "--groups",
                str(groups),
                "--backend",
                backend,
                "--duration",
                str(args.duration),
                "--sample",
                str(args.sample),
                "--seed",
                str(args.seed),
                "--driver",
                args.driver,
                *(["--gc-freeze"] if args.gc_freeze else []),
                *(["--starve", str(args.starve), "--starve-at", str(args.starve_at)] if args.starve else []),
            ]
            print(f"running {backend} G={groups} ...", file=sys.stderr, flush=True)
            try:
                proc = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    timeout=args.duration + args.starve + 120 + groups / 50,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                results.append({"backend": backend, "groups": groups, "error": "timed out"})
                continue
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                results.append(
                    {"backend": backend, "groups": groups, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
                )
                continue
            results.append(json.loads(lines[-1]))
    load_after = load_average()

    headers = [
        "backend",
        "G",
        "nodes",
        "CPU % of 1 core",
        "KiB/node",
        "msg/s",
        "hb gap p50 ms",
        "hb gap p99 ms",
        "hb gap max ms",
        "loop lag p99 ms",
        "elections",
        "leader changes",
        "pre-votes",
        "cold start s",
    ]
    rows: list[list[object]] = []
    for r in results:
        if "error" in r or not r.get("elected_all", False):
            why = r.get("error") or f"{r.get('not_elected')} groups never elected"
            rows.append([r["backend"], r["groups"], 3 * int(r["groups"]), f"FAILED: {why}"] + [""] * 10)  # type: ignore[call-overload]
            continue
        rows.append(
            [
                r["backend"],
                r["groups"],
                r["nodes"],
                100 * float(r["cpu_share"]),  # type: ignore[arg-type]
                r["mem_per_node_kib"],
                r["messages_per_s"],
                r["gap_p50_ms"],
                r["gap_p99_ms"],
                r["gap_max_ms"],
                r["loop_lag_p99_ms"],
                r["elections_started"],
                r["leader_changes"],
                r["pre_votes_started"],
                r["cold_start_s"],
            ]
        )
    info = machine()
    print(
        f"many groups ({'one ElectionHost' if args.driver == 'host' else 'one raft_election task per node'}): "
        f"3-node groups in one process, h={HEARTBEAT * 1000:.0f} ms, T={TIMEOUT * 1000:.0f} ms, "
        f"{args.duration:g} s each ({info['cpu']}, {info['nproc']} CPUs, Python {info['python']})"
    )
    print(f"load average (1 min) before/after: {load_before:.2f}/{load_after:.2f}")
    print()
    print(table(headers, rows))
    starved = [r for r in results if "starve_s" in r]
    if starved:
        print()
        print(
            f"after {args.starve:g} s of starvation ({args.starve_at:g} s into the window), "
            "leader changes / elections started per second:"
        )
        srows = []
        for r in starved:
            per = " ".join(f"{k}s:{c}/{e}" for k, c, e in r["starve_per_second"])  # type: ignore[attr-defined]
            srows.append(
                [
                    r["backend"],
                    r["groups"],
                    r["starve_changes"],
                    r["starve_elections"],
                    r["starve_last_change_s"],
                    r["starve_watched_s"],
                    per,
                ]
            )
        print(
            table(
                ["backend", "G", "leader changes", "elections", "last change s after", "watched s", "per second"],
                srows,
            )
        )
        for r in starved:
            ok = float(r["starve_last_change_s"]) <= 10.0 and float(r["starve_watched_s"]) >= 15.0  # type: ignore[arg-type]
            print(
                f"goal (back to zero leader changes within 10 s of the starvation, watched >= 15 s) "
                f"on {r['backend']}: {'met' if ok else 'NOT met'}"
            )
    goal = [
        r
        for r in results
        if r.get("groups") == GOAL_GROUPS and r.get("elected_all") and "error" not in r and "cpu_share" in r
    ]
    for r in goal:
        ok = float(r["cpu_share"]) < 1.0 and r["spurious_elections"] == 0  # type: ignore[arg-type]
        print(
            f"goal ({GOAL_GROUPS} groups on one core, no spurious election) on {r['backend']}: "
            f"{'met' if ok else 'NOT met'}"
        )
    data: dict[str, object] = {
        "quick": args.quick,
        "driver": args.driver,
        "duration_s": args.duration,
        "heartbeat_interval": HEARTBEAT,
        "election_timeout": TIMEOUT,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "starve_s": args.starve,
        "starve_at_s": args.starve_at,
        "results": results,
    }
    path = write_json("many_groups", data)
    print(f"\nJSON: {path}")
    return data


if __name__ == "__main__":
    main()
