"""Test election code in virtual time: seconds of elections and failovers in milliseconds, the same every run.

Two ways, both run here (``python examples/virtual_time.py``; it needs trio:
``pip install -e '.[trio]'``):

* trio's ``MockClock``: real ``raft_election`` tasks (here a ``LocalCluster``)
  on trio, whose clock jumps ahead whenever every task waits.  For code that
  uses anyio, so it runs on trio in tests even if it runs on asyncio in
  production.
* ``Simulation``: the same election cores with no event loop at all, so it
  suits asyncio-only projects too; one seed replays the same run.
"""

from __future__ import annotations

import anyio
from trio.testing import MockClock

from almost_raft.testing import LocalCluster, Simulation


async def failover() -> None:
    async with LocalCluster(3, seed=1, election_timeout=0.150, heartbeat_interval=0.050) as cluster:
        first = await cluster.wait_for_leader()
        assert first.leader_id is not None
        crashed_at = anyio.current_time()
        await cluster.crash(first.leader_id)
        second = await cluster.wait_for_leader(after_term=first.term)
        took = anyio.current_time() - crashed_at
        print(f"{second.leader_id} took over from {first.leader_id} after {took * 1000:.0f} ms of virtual time")


def simulated_failover() -> None:
    sim = Simulation(3, seed=1, election_timeout=0.150)  # no event loop, no real time
    assert sim.run_until_true(lambda: sim.leader() is not None, timeout=5.0)
    first = sim.leader()
    assert first is not None
    crashed_at = sim.now
    sim.crash(first)
    assert sim.run_until_true(lambda: sim.leader() not in (None, first), timeout=5.0)
    print(f"simulated: {sim.leader()} took over from {first} after {(sim.now - crashed_at) * 1000:.0f} ms")


if __name__ == "__main__":
    anyio.run(failover, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    simulated_failover()
