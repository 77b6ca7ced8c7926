"""Where an idle node's CPU goes: a cProfile table of the leader and of a follower.

Starts a cluster of ``python -m almost_raft`` processes on 127.0.0.1 (5 nodes,
T = 150 ms, h = 50 ms by default), each under this script's ``node`` mode:
the node runs as usual and, from ``--warmup`` seconds after its start, profiles
its event-loop thread for ``--seconds`` seconds, then writes the profile.  Once
every node has written one, it prints the top functions by own time (tottime)
of the leader and of one follower, with the calls per second of the heartbeat
path, and the process CPU each node used in the window (which includes
cProfile's own overhead: read the table for where the time goes, and
``idle_cpu.py`` for how much).

    python benchmarks/profile_idle.py                          # asyncio, T 150 ms
    python benchmarks/profile_idle.py --backend trio --election-timeout 0.012
    python benchmarks/profile_idle.py --sort cumulative --top 40
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tcp_common import BenchCluster

ROOT = Path(__file__).resolve().parent.parent


def _node(argv: Sequence[str]) -> int:
    """``node OUT WARMUP SECONDS -- CLI ARGS``: run one node, profiling a window of its loop."""
    out, warmup, seconds = argv[0], float(argv[1]), float(argv[2])
    cli_args = list(argv[4:])
    import anyio

    from almost_raft import _cli

    opts = _cli.parse_args(cli_args)

    async def main() -> int:
        async def window() -> None:
            await anyio.sleep(warmup)
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            profile = cProfile.Profile(time.process_time)  # CPU time: a wait for the CPU is not cost
            profile.enable()
            await anyio.sleep(seconds)
            profile.disable()
            wall = time.perf_counter() - t0
            usage1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
            profile.dump_stats(out)
            await anyio.Path(out + ".json").write_text(json.dumps({"wall": wall, "cpu": cpu}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(window)
            status = await _cli.run_node(opts)
            tg.cancel_scope.cancel()
        return status

    return anyio.run(main, backend=opts.backend)


def _print_profile(path: Path, title: str, sort: str, top: int) -> None:
    facts = json.loads(Path(str(path) + ".json").read_text())
    stream = io.StringIO()
    stats = pstats.Stats(str(path), stream=stream)
    stats.strip_dirs().sort_stats(sort).print_stats(top)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(
        f"\n=== {title}: {facts['wall']:.1f} s window, process CPU {100 * facts['cpu'] / facts['wall']:.2f} % "
        f"(under cProfile), profiled {1e3 * total / facts['wall']:.2f} ms/s"
    )
    lines = stream.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    print("\n".join(lines[start:]))


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "node":
        return _node(args_list[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--election-timeout", type=float, default=0.150)
    parser.add_argument("--heartbeat-interval", type=float, default=None, help="default T/3")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds after start before profiling")
    parser.add_argument("--seconds", type=float, default=10.0, help="profiled window")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--keep", type=Path, help="copy the profiles (<id>.prof, pstats format) to this directory")
    args = parser.parse_args(args_list)
    t = args.election_timeout
    h = args.heartbeat_interval if args.heartbeat_interval is not None else t / 3
    with tempfile.TemporaryDirectory(prefix="profile-idle-") as tmp:
        workdir = Path(tmp)
        cluster = BenchCluster(
            "almost_raft",
            args.nodes,
            min_timeout=t,
            max_timeout=2 * t,
            heartbeat=h,
            backend=args.backend,
            workdir=workdir,
        )
        outs = {i: workdir / f"{i}.prof" for i in cluster.ids}
        for node_id in cluster.ids:
            cli = cluster.argv(node_id)[3:]  # past "python -m almost_raft"
            command = [sys.executable, __file__, "node", str(outs[node_id]), str(args.warmup), str(args.seconds)]
            cluster.nodes[node_id].start([*command, "--", *cli])
        try:
            agreed = cluster.wait_agreed(timeout=20)
            if agreed is None:
                print("no leader elected within 20 s", file=sys.stderr)
                return 1
            deadline = time.monotonic() + args.warmup + args.seconds + 30
            while time.monotonic() < deadline and not all(Path(str(p) + ".json").exists() for p in outs.values()):
                time.sleep(0.2)
            final = cluster.agreed(cluster.ids)
            for node in cluster.nodes.values():
                node.signal(signal.SIGTERM)
            for node in cluster.nodes.values():
                if node.popen is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        node.popen.wait(5)
        finally:
            cluster.close()
        if final != agreed:
            print(f"warning: the leader changed during the window ({agreed} -> {final})", file=sys.stderr)
        _, leader = agreed
        follower = next(i for i in cluster.ids if i != leader)
        print(
            f"{args.nodes} nodes, {args.backend}, T = {1e3 * t:g} ms, h = {1e3 * h:g} ms, "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for node_id, path in outs.items():
                role = "leader" if node_id == leader else "follower"
                shutil.copy(path, args.keep / f"{role}-{node_id}.prof")
        _print_profile(outs[leader], f"leader {leader}", args.sort, args.top)
        _print_profile(outs[follower], f"follower {follower}", args.sort, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
