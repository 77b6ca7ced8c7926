"""Planned hand-overs through the command line: SIGTERM of the leader, again and again.

A leader that stops gracefully sends ``TimeoutNow`` to a follower and flushes
it to the socket before its process exits, so the follower stands at once, in
the next term, and no node waits out an election timeout.  The checks use the
nodes' ``--json`` lines and the counters of their ``stopped`` lines, never a
time: every election after the first was started by a ``TimeoutNow``
(``elections_started`` equals the ``TimeoutNow`` messages received, in every
incarnation of every node), and each new leader's term is the old one plus one.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from ._procs import ProcCluster, Record

pytestmark = pytest.mark.slow

IDS = ["n1", "n2", "n3", "n4", "n5"]
ROUNDS = 10


def _stop(cluster: ProcCluster, node_id: str) -> Record:
    """SIGTERM *node_id*, wait for its exit; return its ``stopped`` record."""
    node = cluster[node_id]
    node.signal(signal.SIGTERM)
    assert node.wait(10) == 0, node.stderr_text()
    stopped = node.stopped_record()
    assert stopped is not None, f"{node_id} printed no stopped line"
    assert stopped["_start"] == node.starts, f"{node_id} printed no stopped line in its last run"
    return stopped


def _elections_not_by_timeout_now(stopped: Record) -> int:
    """Elections an incarnation started that no ``TimeoutNow`` asked for (it waited out a timeout)."""
    status = stopped["status"]
    return int(status["elections_started"]) - int(status["received_by_kind"].get("TimeoutNow", 0))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_every_sigterm_of_the_leader_hands_over_by_timeout_now(procs: Callable[..., ProcCluster], backend: str) -> None:
    cluster = procs(IDS, election_timeout=0.15, extra=["--backend", backend])
    cluster.start()
    term, leader = cluster.wait_agreed(timeout=20)
    stopped: list[Record] = []
    # The first election was won by a timeout: restart the followers, so that
    # every incarnation checked below began after it.  A follower leaves
    # without an election.
    for node_id in IDS:
        if node_id != leader:
            _stop(cluster, node_id)
            cluster.start(node_id)
            assert cluster.wait_agreed(timeout=10) == (term, leader)
    first_leader = leader

    for _ in range(ROUNDS):
        record = _stop(cluster, leader)
        assert record["status"]["transfers_started"] == 1, record["status"]
        stopped.append(record)
        survivors = [i for i in IDS if i != leader]
        new_term, new_leader = cluster.wait_agreed(survivors, not_leader=leader, min_term=term + 1, timeout=10)
        assert new_term == term + 1, f"term {term} -> {new_term}: the hand-over was lost and an election followed"
        cluster.start(leader)
        assert cluster.wait_agreed(timeout=10) == (new_term, new_leader)
        term, leader = new_term, new_leader

    # Stop the followers, then the leader, so that every incarnation reports its counters.
    for node_id in [*(i for i in IDS if i != leader), leader]:
        stopped.append(_stop(cluster, node_id))
    by_timeout = {
        (r["node"], r["_start"]): _elections_not_by_timeout_now(r)
        for r in stopped
        if not (r["node"] == first_leader and r["_start"] == 1)
    }
    assert all(n == 0 for n in by_timeout.values()), f"elections started by a timeout: {by_timeout}"
    # Safety, as everywhere: one leader per term.
    leaders: dict[int, set[str]] = {}
    for node in cluster.nodes.values():
        for r in node.leader_records():
            if r["leader_id"] is not None:
                leaders.setdefault(r["term"], set()).add(r["leader_id"])
    assert all(len(names) == 1 for names in leaders.values()), leaders
