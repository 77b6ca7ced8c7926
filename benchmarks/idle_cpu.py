"""Idle cost: CPU per node with a stable leader, at T = 150 ms and at T = 12 ms (h = T/3, the default).

Leader election runs in the background of someone else's service; once a
leader is elected, all that is left is heartbeats.  This benchmark measures
what that costs, for clusters of 3 and 5 nodes:

* ``tcp``: one process per node, ``python -m almost_raft`` over TCP on
  127.0.0.1 (the real deployment); CPU read per process from /proc, so the
  leader and the followers are shown apart.
* ``memory``: every node in one process over the in-memory transport
  (``MemoryNetwork``, nodes registered with their state); per node = the
  process's CPU / nodes.
* ``pysyncobj``: PySyncObj (if installed), one process per node, a
  ``SyncObj`` with no replicated state, once at its own default timing
  (election timeout 0.4-1.4 s, heartbeat 0.1 s) and once at ours: election
  timeout T-2T, heartbeat just under T/3 (it requires T > 3h), and its tick
  (``autoTickPeriod``, 50 ms by default) scaled with T like the rest (T/3).
* ``floor``: what any asyncio process pays for the same traffic, with no
  election and no decoding: one process writes 60 bytes to each of the others
  every h, and they echo them back from a protocol callback.  It is the
  least a node of one process per node can cost at that rate on this
  machine: the wake-ups themselves.
* ``idle python``: a Python process running an event loop that only sleeps.

    python benchmarks/idle_cpu.py                 # 30 s per measurement, both timings
    python benchmarks/idle_cpu.py --quick         # 3 nodes, asyncio, 2 s per measurement
    python benchmarks/idle_cpu.py --before REV    # also the TCP nodes of commit REV, same sitting
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
from _perf_common import code_of, load_average, machine, process_cpu, table, write_json

from almost_raft import RaftElectionState, Role, raft_election
from almost_raft.transports.memory import MemoryNetwork

TIMINGS = {"150-300ms": 0.150, "12-24ms": 0.012}
"""T of each timing; the heartbeat is T/3 (the default), the timeouts T-2T."""
ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process *pid* so far, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _measure(procs: Sequence[subprocess.Popen[str]], seconds: float) -> list[float]:
    """CPU share of one core used by each of *procs* over the next *seconds*."""
    before = [_proc_cpu(p.pid) for p in procs]
    start = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - start
    return [(_proc_cpu(p.pid) - b) / wall for p, b in zip(procs, before, strict=True)]


def _stop(procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ------------------------------------------------------------------ almost_raft over TCP


def tcp_cluster(n: int, seconds: float, backend: str, t: float, code: Path = ROOT) -> dict[str, object]:
    ids = [f"n{i + 1}" for i in range(n)]
    ports = dict(zip(ids, _free_ports(n), strict=True))
    procs: list[subprocess.Popen[str]] = []
    for node_id in ids:
        command = [
            sys.executable,
            "-m",
            "almost_raft",
            "--id",
            node_id,
            "--listen",
            f"127.0.0.1:{ports[node_id]}",
            "--election-timeout",
            str(t),
            "--heartbeat-interval",
            str(t / 3),
            "--backend",
            backend,
            "--json",
            "--log-level",
            "ERROR",
        ]
        for peer in ids:
            if peer != node_id:
                command += ["--peer", f"{peer}=127.0.0.1:{ports[peer]}"]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=code))
    try:
        leader = _wait_tcp_leader(procs, ids)
        time.sleep(1.0)  # past the start-up
        shares = _measure(procs, seconds)
    finally:
        _stop(procs)
    if leader is None:
        return {"error": "no leader elected within 40 s"}
    lead = shares[ids.index(leader)]
    followers = [s for i, s in enumerate(shares) if ids[i] != leader]
    return {
        "per_node": sum(shares) / n,
        "leader": lead,
        "follower": sum(followers) / len(followers),
        "shares": dict(zip(ids, shares, strict=True)),
    }


def _wait_tcp_leader(procs: Sequence[subprocess.Popen[str]], ids: Sequence[str]) -> str | None:
    """Read each node's JSON lines until all name the same leader; return it."""
    import selectors

    views: dict[int, object] = {}
    sel = selectors.DefaultSelector()
    for i, p in enumerate(procs):
        assert p.stdout is not None
        os.set_blocking(p.stdout.fileno(), False)
        sel.register(p.stdout, selectors.EVENT_READ, i)
    buffers = ["" for _ in procs]
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            for key, _ in sel.select(0.1):
                i = key.data
                chunk = key.fileobj.read()  # type: ignore[union-attr]
                if not chunk:
                    continue
                buffers[i] += chunk
                *lines, buffers[i] = buffers[i].split("\n")
                for line in lines:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and "leader_id" in event:
                        views[i] = event["leader_id"]
            leaders = {views.get(i) for i in range(len(procs))}
            if len(leaders) == 1 and None not in leaders:
                (leader,) = leaders
                return str(leader) if leader in ids else None
    finally:
        sel.close()
    return None


# --------------------------------------------------------------- almost_raft in memory


async def _memory(n: int, seconds: float, t: float) -> dict[str, object]:
    network = MemoryNetwork()
    ids = [f"m{i + 1}" for i in range(n)]
    states = []
    controls = []
    for node_id in ids:
        peers = [network.node(p, sender_id=node_id) for p in ids if p != node_id]
        state, control = RaftElectionState.init(
            node_id,
            election_timeout=t,
            heartbeat_interval=t / 3,
            nodes=peers,
            min_nodes=n,
            rng=random.Random(node_id),
        )
        network.register(node_id, control)
        states.append(state)
        controls.append(control)
    try:
        async with anyio.create_task_group() as tg:
            for state in states:
                await tg.start(raft_election, state)
            with anyio.fail_after(10):
                while sum(s.role is Role.LEADER for s in states) != 1:  # noqa: ASYNC110 - polls a cheap condition
                    await anyio.sleep(0.05)
            await anyio.sleep(1.0)
            cpu0, t0 = process_cpu(), anyio.current_time()
            await anyio.sleep(seconds)
            cpu1, t1 = process_cpu(), anyio.current_time()
            tg.cancel_scope.cancel()
    finally:
        for control in controls:
            control.close()
    share = (cpu1 - cpu0) / (t1 - t0)
    return {"per_node": share / n, "process": share}


def memory_cluster(n: int, seconds: float, backend: str, t: float) -> dict[str, object]:
    """Run the in-memory cluster in a fresh process, so that nothing else adds to its CPU."""
    code = (
        "import sys, json, anyio; sys.path.insert(0, sys.argv[1]); import idle_cpu; "
        "print(json.dumps(anyio.run(idle_cpu._memory, int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[5]), "
        "backend=sys.argv[4])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).resolve().parent), str(n), str(seconds), backend, str(t)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=seconds + 60,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    result: dict[str, object] = json.loads(lines[-1])
    return result


# ----------------------------------------------------------------------- PySyncObj

_PYSYNCOBJ_NODE = """
import sys, time
from pysyncobj import SyncObj, SyncObjConf
me, others, timing = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
conf = SyncObjConf()
if timing != "own":
    # Our timing: T-2T, and PySyncObj insists on raftMinTimeout > 3 x appendEntriesPeriod
    # (49 ms, not 50, at T = 150 ms); its tick, 50 ms by default, scales with T.
    t = float(timing)
    conf.raftMinTimeout, conf.raftMaxTimeout, conf.appendEntriesPeriod = t, 2 * t, t / 3 * 0.98
    conf.autoTickPeriod = t / 3
obj = SyncObj(me, others, conf=conf)
told = None
while True:
    leader = obj._getLeader()
    if leader != told:
        told = leader
        print("leader", leader, flush=True)
    time.sleep(0.1)
"""


def pysyncobj_cluster(n: int, seconds: float, timing: str) -> dict[str, object]:
    if importlib.util.find_spec("pysyncobj") is None:
        return {"error": "pysyncobj is not installed (pip install pysyncobj)"}
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(n)]
    procs = []
    for address in addresses:
        others = ",".join(a for a in addresses if a != address)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _PYSYNCOBJ_NODE, address, others, timing],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
    try:
        leader = _wait_pysyncobj_leader(procs)
        time.sleep(1.0)
        shares = _measure(procs, seconds)
    finally:
        _stop(procs)
    if leader is None:
        return {"error": "no leader elected within 40 s"}
    index = addresses.index(leader) if leader in addresses else -1
    followers = [s for i, s in enumerate(shares) if i != index]
    return {
        "per_node": sum(shares) / n,
        "leader": shares[index] if index >= 0 else float("nan"),
        "follower": sum(followers) / len(followers),
    }


def _wait_pysyncobj_leader(procs: Sequence[subprocess.Popen[str]]) -> str | None:
    import selectors

    views: dict[int, str] = {}
    sel = selectors.DefaultSelector()
    for i, p in enumerate(procs):
        assert p.stdout is not None
        sel.register(p.stdout, selectors.EVENT_READ, i)
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            for key, _ in sel.select(0.1):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if line.startswith("leader "):
                    views[key.data] = line.split(" ", 1)[1].strip()
            values = {views.get(i) for i in range(len(procs))}
            if len(values) == 1 and None not in values and "None" not in values:
                return str(values.pop())
    finally:
        sel.close()
    return None


_ECHO = """
import asyncio, sys
class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)
class Sink(asyncio.Protocol):
    def data_received(self, data):
        pass
async def main():
    loop = asyncio.get_running_loop()
    if sys.argv[1] == "echo":
        await loop.create_server(Echo, "127.0.0.1", int(sys.argv[2]))
        await asyncio.Event().wait()
    interval, ports = float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
    transports = [(await loop.create_connection(Sink, "127.0.0.1", p))[0] for p in ports]
    frame = b"x" * 60
    while True:
        for transport in transports:
            transport.write(frame)
        await asyncio.sleep(interval)
asyncio.run(main())
"""


def echo_floor(n: int, seconds: float, t: float) -> dict[str, object]:
    """The least an asyncio process pays at this rate: no election, no decoding, only the wake-ups.

    One process writes 60 bytes to each of *n* - 1 others every h = T/3 (an
    ``asyncio.sleep`` loop); each of those echoes them back from a protocol
    callback.  Same sockets, same rate and same wake-ups as a leader and its
    followers, nothing else.
    """
    ports = _free_ports(n - 1)
    procs = [subprocess.Popen([sys.executable, "-c", _ECHO, "echo", str(p)], text=True) for p in ports]
    try:
        time.sleep(1.0)
        leader = subprocess.Popen([sys.executable, "-c", _ECHO, "leader", str(t / 3), *map(str, ports)], text=True)
        procs.insert(0, leader)
        time.sleep(1.0)
        shares = _measure(procs, seconds)
    finally:
        _stop(procs)
    followers = shares[1:]
    return {"per_node": sum(shares) / n, "leader": shares[0], "follower": sum(followers) / len(followers)}


def idle_python(seconds: float) -> dict[str, object]:
    code = "import anyio; anyio.run(anyio.sleep_forever)"
    proc = subprocess.Popen([sys.executable, "-c", code], text=True)
    try:
        time.sleep(1.0)
        (share,) = _measure([proc], seconds)
    finally:
        _stop([proc])
    return {"per_node": share}


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 nodes, asyncio, PySyncObj at our timing, 2 s each")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measurement")
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--backends", nargs="+", default=["asyncio", "trio"])
    parser.add_argument("--timings", nargs="+", default=list(TIMINGS), choices=list(TIMINGS))
    parser.add_argument("--before", metavar="REV", help="also measure the TCP nodes of this commit (same sitting)")
    parser.add_argument("--no-memory", action="store_true", help="skip the in-memory clusters")
    args = parser.parse_args(argv)
    seconds = 2.0 if args.quick else args.seconds
    if args.quick:
        args.nodes, args.backends = [3], ["asyncio"]
    load_before = load_average()
    results: list[dict[str, object]] = []

    def add(what: str, backend: str, n: int, r: dict[str, object], timing: str) -> None:
        r.update({"what": what, "backend": backend, "nodes": n, "timing": timing})
        results.append(r)
        print(f"{what} {backend} {timing} n={n}: {r}", file=sys.stderr, flush=True)

    for timing in args.timings:
        t = TIMINGS[timing]
        for n in args.nodes:
            for backend in args.backends:
                if args.before:
                    with code_of(args.before) as code:
                        r = tcp_cluster(n, seconds, backend, t, code)
                    add(f"almost_raft tcp, before ({args.before})", backend, n, r, timing)
                add("almost_raft tcp (process per node)", backend, n, tcp_cluster(n, seconds, backend, t), timing)
                if not args.no_memory:
                    add("almost_raft memory (one process)", backend, n, memory_cluster(n, seconds, backend, t), timing)
            if not args.quick and timing == "150-300ms":
                r = pysyncobj_cluster(n, seconds, "own")
                add("pysyncobj, its defaults (T 0.4-1.4 s, h 0.1 s)", "threads", n, r, "own")
            add("pysyncobj, our timing", "threads", n, pysyncobj_cluster(n, seconds, str(t)), timing)
            add("floor: asyncio echo, no election (process per node)", "asyncio", n, echo_floor(n, seconds, t), timing)
    add("idle python (event loop asleep)", "asyncio", 1, idle_python(seconds), "-")
    load_after = load_average()

    def pct(r: dict[str, object], key: str) -> object:
        value = r.get(key)
        return 100 * value if isinstance(value, float) else "-"

    rows = [
        [
            r["what"],
            r["timing"],
            r["backend"],
            r["nodes"],
            pct(r, "per_node") if "error" not in r else f"error: {r['error']}",
            pct(r, "leader"),
            pct(r, "follower"),
        ]
        for r in results
    ]
    info = machine()
    print(
        f"idle CPU with a stable leader, h = T/3, {seconds:g} s each "
        f"({info['cpu']}, {info['nproc']} CPUs, Python {info['python']})"
    )
    print(f"load average (1 min) before/after: {load_before:.2f}/{load_after:.2f}")
    print()
    print(table(["what", "timing", "backend", "nodes", "CPU % per node", "leader %", "follower %"], rows))
    for timing in args.timings:
        for n in args.nodes:
            ref = next(
                (
                    r
                    for r in results
                    if r["what"] == "pysyncobj, our timing"
                    and r["timing"] == timing
                    and r["nodes"] == n
                    and isinstance(r.get("per_node"), float)
                ),
                None,
            )
            if ref is None:
                continue
            for r in results:
                if r["timing"] == timing and r["nodes"] == n and "tcp" in str(r["what"]) and "per_node" in r:
                    ratio = float(r["per_node"]) / float(ref["per_node"])  # type: ignore[arg-type]
                    print(f"{timing} n={n} {r['what']} {r['backend']}: {ratio:.2f} x PySyncObj at our timing")
    data: dict[str, object] = {
        "quick": args.quick,
        "seconds": seconds,
        "timings": {k: TIMINGS[k] for k in args.timings},
        "before": args.before,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": results,
    }
    path = write_json("idle_cpu", data)
    print(f"\nJSON: {path}")
    return data


if __name__ == "__main__":
    main()
