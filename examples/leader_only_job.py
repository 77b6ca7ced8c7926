"""Run a periodic job on the leader only, fenced by the lease's term.

Three nodes run in one process (``LocalCluster``).  Each node runs the same
job through ``run_while_leader``, so only the node that holds the leader's
lease runs it: every 100 ms it writes to a fake store, passing ``lease.term``
as a fencing token; the store refuses a token smaller than one it has seen.

The demo cuts the leader off the network.  Its job is cancelled when its
lease runs out, before any other node can be elected; the new leader's job
then writes with a larger token, and a late write carrying the old token
(a process that was frozen mid-write, say) is refused.

Run it with ``python examples/leader_only_job.py`` (asyncio) or
``python examples/leader_only_job.py --backend trio``; it ends by itself in
about two seconds.
"""

from __future__ import annotations

import argparse
import logging
import sys

import anyio

from almost_raft import RaftElectionState
from almost_raft.leadership import Lease, run_while_leader
from almost_raft.testing import LocalCluster


class FencedStore:
    """A fake external store that refuses writes older than the newest it accepted."""

    def __init__(self) -> None:
        self.highest_token = -1

    def write(self, token: int, value: str) -> bool:
        if token < self.highest_token:
            print(f"{clock()}  store REFUSED {value!r}: token {token} < {self.highest_token}")
            return False
        self.highest_token = token
        print(f"{clock()}  store accepted {value!r} (token {token})")
        return True


store = FencedStore()
started_at = 0.0
stopped_at: dict[int, float] = {}  # term -> when that term's job stopped


def clock() -> str:
    return f"[{1000 * (anyio.current_time() - started_at):6.0f} ms]"


# --- the leader-only job: this part is all an application needs --------------
async def job(lease: Lease) -> None:
    """Runs only while this node holds the leader's lease; cancelled as soon as it is lost."""
    while True:
        lease.check()  # raises LeaseLost if the lease ended since the last await
        store.write(lease.term, f"tick from {lease.leader_id}")
        await anyio.sleep(0.100)


async def leader_only(state: RaftElectionState) -> None:
    """Beside ``raft_election(state)``: waits for the lease, runs the job, again after each new win."""
    await run_while_leader(state, job)


# --- the demonstration around it -----------------------------------------------
async def traced_job(lease: Lease) -> None:
    print(f"{clock()}  {lease.leader_id} holds the lease of term {lease.term}: job starts")
    try:
        await job(lease)
    finally:
        stopped_at[lease.term] = anyio.current_time()
        why = "the lease was lost" if not lease.valid() else "shutting down"
        print(f"{clock()}  {lease.leader_id}: job of term {lease.term} stopped, {why}")


async def demo() -> None:
    global started_at
    started_at = anyio.current_time()
    async with (
        LocalCluster(3, latency=0.001, election_timeout=0.150, heartbeat_interval=0.050) as cluster,
        anyio.create_task_group() as tg,
    ):
        for node_id in cluster.ids:
            tg.start_soon(run_while_leader, cluster.states[node_id], traced_job)
        with anyio.fail_after(5):
            first = await cluster.wait_for_leader()
        await anyio.sleep(0.350)

        old = first.leader_id
        assert old is not None
        print(f"{clock()}  cutting {old} off the network")
        cluster.isolate(old)
        with anyio.fail_after(5):
            second = await cluster.wait_for_leader([n for n in cluster.ids if n != old], after_term=first.term)
        gap = 1000 * (anyio.current_time() - stopped_at[first.term])
        print(f"{clock()}  {second.leader_id} leads term {second.term}; {old}'s job had stopped {gap:.0f} ms before")
        await anyio.sleep(0.350)

        cluster.heal_all()
        print(f"{clock()}  {old} is back as a follower; a late write with its old token:")
        store.write(first.term, f"late write from {old}")
        tg.cancel_scope.cancel()
    for control in cluster.controls.values():
        control.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="            (log) %(message)s")
    anyio.run(demo, backend=args.backend)


if __name__ == "__main__":
    main()
