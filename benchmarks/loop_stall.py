"""The largest event-loop stall the default timing tolerates (T = 150 ms, h = 50 ms, T_max = 300 ms).

A stall is a blocking call in the event loop that runs the election (a
CPU-bound callback, a synchronous read): nothing else runs for its length.
For each stall length ``s`` a fresh 3-node cluster elects a leader, then
suffers ``--stalls`` stalls, one every ``--period`` seconds, and the
benchmark counts what a user would call spurious: elections started and
leaders stepping down (nothing else is faulted).  Two scenarios:

* ``leader``: each node has its own event loop (its own thread, messages
  handed between loops thread-safely) and only the leader's loop stalls, as
  in a real deployment with one node per process.  Followers then hear no
  heartbeat for ``s`` plus up to ``h``; the tuning guide predicts trouble
  when that exceeds ``T``, i.e. tolerance up to ``T - h`` = 100 ms.
* ``process``: the three nodes share one event loop, which stalls as a whole
  (tests, ``LocalCluster``, many groups in one process).

The answer is the largest ``s`` with no spurious election in any of its
stalls, and the smallest ``s`` with one.

    python benchmarks/loop_stall.py            # s = 20..200 ms, 10 stalls each, asyncio and trio
    python benchmarks/loop_stall.py --quick    # asyncio, 3 stall lengths, 2 stalls each
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import trio
from _perf_common import load_average, machine, table, write_json

from almost_raft import Message, RaftElectionState, Role, raft_election
from almost_raft._messages import NodeId
from almost_raft.transports.memory import MemoryNetwork

T = 0.150
H = 0.050
IDS: tuple[NodeId, ...] = ("a", "b", "c")


def _counts(states: Sequence[RaftElectionState]) -> tuple[int, int]:
    """(elections started, step-downs) summed over *states* (read from the cores: any thread may call it)."""
    cores = [s.core for s in states if s.core is not None]
    return (sum(c.counters.elections_started for c in cores), sum(c.counters.step_downs for c in cores))


def _leader(states: Sequence[RaftElectionState]) -> RaftElectionState | None:
    leaders = [s for s in states if s.role is Role.LEADER]
    if len(leaders) == 1 and all(s.leader_id == leaders[0].self_id for s in states):
        return leaders[0]
    return None


def _state(node_id: NodeId, peers: list[Any], seed: int) -> tuple[RaftElectionState, Any]:
    return RaftElectionState.init(
        node_id,
        election_timeout=T,
        heartbeat_interval=H,
        nodes=peers,
        min_nodes=len(IDS),
        rng=random.Random(f"{seed}/{node_id}"),
    )


# --------------------------------------------------------------- scenario: process


async def _process_run(stall: float, stalls: int, period: float, seed: int) -> dict[str, object]:
    network = MemoryNetwork()
    states: list[RaftElectionState] = []
    controls = []
    for node_id in IDS:
        state, control = _state(node_id, [network.node(p, sender_id=node_id) for p in IDS if p != node_id], seed)
        network.register(node_id, control)
        states.append(state)
        controls.append(control)
    try:
        async with anyio.create_task_group() as tg:
            for state in states:
                await tg.start(raft_election, state)
            with anyio.fail_after(10):
                # Polls a cheap condition until the first leader holds its lease.
                while _leader(states) is None or not _leader(states).holds_lease:  # type: ignore[union-attr]  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            before = _counts(states)
            for _ in range(stalls):
                await anyio.sleep(period * random.random() + period / 2)
                time.sleep(stall)  # noqa: ASYNC251 - the stall under test: the whole loop is blocked
            await anyio.sleep(2 * T)  # let whatever the last stall set off happen
            after = _counts(states)
            tg.cancel_scope.cancel()
    finally:
        for control in controls:
            control.close()
    return {"elections": after[0] - before[0], "step_downs": after[1] - before[1]}


# ---------------------------------------------------------------- scenario: leader


class _Post:
    """Hands a callable to another thread's event loop without blocking."""

    def __init__(self, backend: str) -> None:
        if backend == "asyncio":
            loop = asyncio.get_running_loop()
            self._post: Callable[..., object] = loop.call_soon_threadsafe
        else:
            self._post = trio.lowlevel.current_trio_token().run_sync_soon

    def __call__(self, fn: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # that loop has ended
            self._post(fn, *args)


class _ThreadNode:
    """A ``Node`` in another thread's event loop."""

    def __init__(self, node_id: NodeId, registry: dict[NodeId, tuple[_Post, Any]]) -> None:
        self._node_id = node_id
        self._registry = registry

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    def send_message_nowait(self, message: Message) -> None:
        entry = self._registry.get(self._node_id)
        if entry is not None:
            post, control = entry
            post(_deliver, control, message)

    async def send_message(self, message: Message) -> None:
        self.send_message_nowait(message)


def _deliver(control: Any, message: Message) -> None:
    with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
        control.send_nowait(message)


def _leader_run(backend: str, stall: float, stalls: int, period: float, seed: int) -> dict[str, object]:
    registry: dict[NodeId, tuple[_Post, Any]] = {}
    states: dict[NodeId, RaftElectionState] = {}
    stop = threading.Event()
    done_stalls = [0]
    lock = threading.Lock()

    async def node_main(node_id: NodeId) -> None:
        peers = [_ThreadNode(p, registry) for p in IDS if p != node_id]
        state, control = _state(node_id, peers, seed)
        states[node_id] = state
        with control:
            async with anyio.create_task_group() as tg:
                await tg.start(raft_election, state)
                registry[node_id] = (_Post(backend), control)
                next_stall = anyio.current_time() + 1.0
                while not stop.is_set():
                    await anyio.sleep(0.01)
                    if state.is_leader and state.holds_lease and anyio.current_time() >= next_stall:
                        with lock:
                            if done_stalls[0] >= stalls:
                                continue
                            done_stalls[0] += 1
                        time.sleep(stall)  # noqa: ASYNC251 - the stall under test: only this node's loop
                        next_stall = anyio.current_time() + period * random.random() + period / 2
                registry.pop(node_id, None)
                tg.cancel_scope.cancel()

    threads = [
        threading.Thread(target=anyio.run, args=(node_main, node_id), kwargs={"backend": backend}, daemon=True)
        for node_id in IDS
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (len(states) < len(IDS) or _leader(list(states.values())) is None):
        time.sleep(0.01)
    before = _counts(list(states.values()))
    deadline = time.monotonic() + 10 + stalls * (2 * period + stall)
    while done_stalls[0] < stalls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(2 * T + stall)
    after = _counts(list(states.values()))
    stop.set()
    for thread in threads:
        thread.join(5)
    return {
        "elections": after[0] - before[0],
        "step_downs": after[1] - before[1],
        "stalls_done": done_stalls[0],
    }


# ------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="asyncio, 3 stall lengths, 2 stalls each")
    parser.add_argument(
        "--stall-ms", type=float, nargs="+", default=[20, 40, 60, 70, 80, 90, 100, 110, 120, 140, 160, 200]
    )
    parser.add_argument("--stalls", type=int, default=10, help="stalls per length")
    parser.add_argument("--period", type=float, default=0.4, help="mean seconds between two stalls")
    parser.add_argument("--backends", nargs="+", default=["asyncio", "trio"])
    parser.add_argument("--scenarios", nargs="+", default=["leader", "process"], choices=["leader", "process"])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.stall_ms, args.stalls, args.backends, args.period = [40, 90, 200], 2, ["asyncio"], 0.2
    load_before = load_average()
    results: list[dict[str, object]] = []
    for scenario in args.scenarios:
        for backend in args.backends:
            for stall_ms in args.stall_ms:
                stall = stall_ms / 1000
                if scenario == "leader":
                    r = _leader_run(backend, stall, args.stalls, args.period, args.seed)
                else:
                    r = anyio.run(_process_run, stall, args.stalls, args.period, args.seed, backend=backend)
                r.update({"scenario": scenario, "backend": backend, "stall_ms": stall_ms, "stalls": args.stalls})
                results.append(r)
                print(f"{scenario} {backend} {stall_ms:g} ms: {r}", flush=True)
    load_after = load_average()

    rows: list[list[object]] = []
    summary: list[dict[str, object]] = []
    for scenario in args.scenarios:
        for backend in args.backends:
            mine = [r for r in results if r["scenario"] == scenario and r["backend"] == backend]
            bad = [r for r in mine if int(r["elections"]) + int(r["step_downs"]) > 0]  # type: ignore[call-overload]
            first_bad = min((float(r["stall_ms"]) for r in bad), default=float("nan"))  # type: ignore[arg-type]
            ok = [float(r["stall_ms"]) for r in mine if r not in bad and float(r["stall_ms"]) < first_bad]  # type: ignore[arg-type]
            tolerated = max(ok, default=float("nan"))
            summary.append(
                {"scenario": scenario, "backend": backend, "tolerated_ms": tolerated, "first_failing_ms": first_bad}
            )
            for r in mine:
                rows.append([scenario, backend, r["stall_ms"], r["stalls"], r["elections"], r["step_downs"]])
    info = machine()
    print()
    print(
        f"loop stall: T={T * 1000:.0f} ms, h={H * 1000:.0f} ms, T_max={2 * T * 1000:.0f} ms, "
        f"{args.stalls} stalls per length ({info['cpu']}, Python {info['python']})"
    )
    print(f"load average (1 min) before/after: {load_before:.2f}/{load_after:.2f}")
    print()
    print(table(["scenario", "backend", "stall ms", "stalls", "elections", "step-downs"], rows))
    print()
    print(
        table(
            ["scenario", "backend", "largest stall tolerated (ms)", "smallest stall that disturbed (ms)"],
            [[s["scenario"], s["backend"], s["tolerated_ms"], s["first_failing_ms"]] for s in summary],
        )
    )
    data: dict[str, object] = {
        "quick": args.quick,
        "election_timeout": T,
        "heartbeat_interval": H,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": results,
        "summary": summary,
    }
    path = write_json("loop_stall", data)
    print(f"\nJSON: {path}")
    return data


if __name__ == "__main__":
    main()
