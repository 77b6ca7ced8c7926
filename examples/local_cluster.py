"""The main demonstration: a 5-node cluster in one process elects, loses its leader, elects again.

Run it with ``python examples/local_cluster.py`` (asyncio) or
``python examples/local_cluster.py --backend trio``.  It ends by itself in a
few seconds and prints each failover time: from the moment the leader is
killed until every survivor knows the same new leader.
"""

from __future__ import annotations

import argparse
import statistics

import anyio

from almost_raft.testing import LocalCluster

ELECTION_TIMEOUT = 0.150  # T: every round draws a timeout from [T, 2T)
HEARTBEAT_INTERVAL = 0.050
ROUNDS = 5


async def demo(rounds: int) -> list[float]:
    failovers: list[float] = []
    async with LocalCluster(
        5, election_timeout=ELECTION_TIMEOUT, heartbeat_interval=HEARTBEAT_INTERVAL, message_timeout=0.05
    ) as cluster:
        started = anyio.current_time()
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
        print(
            f"cluster of {len(cluster.ids)} nodes {list(cluster.ids)}: "
            f"{leader.leader_id} leads term {leader.term} after {1000 * (anyio.current_time() - started):.0f} ms"
        )
        for round_no in range(1, rounds + 1):
            # Let the new leader settle for a random part of a heartbeat interval, then kill it.
            await anyio.sleep(0.2 + (round_no % 3) * HEARTBEAT_INTERVAL / 3)
            killed = leader.leader_id
            assert killed is not None
            crashed_at = anyio.current_time()
            await cluster.crash(killed)
            with anyio.fail_after(5):
                leader = await cluster.wait_for_leader(after_term=leader.term)
            took = anyio.current_time() - crashed_at
            failovers.append(took)
            print(
                f"round {round_no}: killed {killed}; {leader.leader_id} leads term {leader.term}, "
                f"known to all {len(cluster.running)} survivors after {1000 * took:.0f} ms"
            )
            await cluster.start(killed)  # it comes back as a follower and does not disturb the leader
            with anyio.fail_after(5):
                back = await cluster.wait_for_leader()
            assert back == leader, (back, leader)
            print(f"         {killed} restarted and follows {back.leader_id} in term {back.term}")
    return failovers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    if args.backend == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            parser.error("--backend trio needs trio: pip install -e '.[trio]'")
    print(
        f"almost_raft demo on {args.backend}: election timeout {1000 * ELECTION_TIMEOUT:.0f}-"
        f"{2000 * ELECTION_TIMEOUT:.0f} ms, heartbeat {1000 * HEARTBEAT_INTERVAL:.0f} ms"
    )
    failovers = anyio.run(demo, args.rounds, backend=args.backend)
    ms = [1000 * f for f in failovers]
    print(
        f"failover over {len(ms)} rounds: min {min(ms):.0f} ms, median {statistics.median(ms):.0f} ms, "
        f"max {max(ms):.0f} ms (lower bound: {1000 * ELECTION_TIMEOUT:.0f} ms timeout minus the part of "
        "a heartbeat interval already elapsed)"
    )


if __name__ == "__main__":
    main()
