"""Real node processes (``python -m almost_raft``) over real TCP on 127.0.0.1.

Each test starts its own processes on free ports and the ``procs`` fixture
kills every one of them at teardown, pass or fail.  Waiting is for lines the
nodes print (``--json``), under deadlines.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest

from ._procs import ProcCluster

pytestmark = pytest.mark.slow

T = 0.15
"""Election timeout of the process tests: short, so that the suite stays fast."""


def assert_one_leader_per_term(cluster: ProcCluster) -> None:
    """Safety: no two nodes ever named different leaders for one term."""
    leaders: dict[int, set[str]] = {}
    for node in cluster.nodes.values():
        for record in node.leader_records():
            if record["leader_id"] is not None:
                leaders.setdefault(record["term"], set()).add(record["leader_id"])
    split = {term: names for term, names in leaders.items() if len(names) > 1}
    assert not split, f"two leaders in one term: {split}"


def assert_terms_never_decrease(cluster: ProcCluster) -> None:
    for node in cluster.nodes.values():
        terms = [r["term"] for r in node.leader_records()]
        assert terms == sorted(terms), f"{node.node_id} printed decreasing terms {terms}"


@pytest.mark.parametrize("size", [3, 5])
def test_cluster_elects_one_leader_and_replaces_a_killed_one(procs: Callable[..., ProcCluster], size: int) -> None:
    ids = [f"n{i}" for i in range(1, size + 1)]
    cluster = procs(ids, election_timeout=T)
    cluster.start()
    term, leader = cluster.wait_agreed(timeout=20)
    for node in cluster.nodes.values():
        latest = node.latest()
        assert latest is not None
        assert set(latest) >= {"node", "term", "leader_id", "monotonic"}
        assert latest["node"] == node.node_id
        assert isinstance(latest["monotonic"], float)

    cluster[leader].signal(signal.SIGKILL)
    assert cluster[leader].wait(10) == -signal.SIGKILL
    survivors = [i for i in ids if i != leader]
    new_term, new_leader = cluster.wait_agreed(survivors, not_leader=leader, min_term=term + 1, timeout=10)
    assert new_leader in survivors
    assert new_term > term
    assert_one_leader_per_term(cluster)
    assert_terms_never_decrease(cluster)


def test_paused_leader_is_replaced_and_follows_when_resumed(procs: Callable[..., ProcCluster]) -> None:
    ids = ["a", "b", "c"]
    cluster = procs(ids, election_timeout=T)
    cluster.start()
    term, leader = cluster.wait_agreed(timeout=20)
    old = cluster[leader]
    others = [i for i in ids if i != leader]

    old.signal(signal.SIGSTOP)
    new_term, _ = cluster.wait_agreed(others, not_leader=leader, min_term=term + 1, timeout=10)
    seen_before_resume = len(old.leader_records())

    old.signal(signal.SIGCONT)
    # The old leader learns of the newer term and follows; it never leads again meanwhile.
    final_term, final_leader = cluster.wait_agreed(ids, not_leader=leader, min_term=new_term, timeout=10)
    after = old.leader_records()[seen_before_resume:]
    assert after, "the resumed node printed no change of view"
    assert all(r["leader_id"] != leader for r in after), f"the resumed node claimed leadership again: {after}"
    assert after[-1]["term"] == final_term
    assert after[-1]["leader_id"] == final_leader
    # Nobody else went back to the old leader either.
    for node_id in others:
        records = cluster[node_id].leader_records()
        assert all(r["term"] <= term or r["leader_id"] != leader for r in records)
    assert_one_leader_per_term(cluster)
    assert_terms_never_decrease(cluster)


def test_restarted_node_rejoins_with_its_storage_without_raising_the_term(
    procs: Callable[..., ProcCluster],
) -> None:
    ids = ["a", "b", "c"]
    cluster = procs(ids, election_timeout=T, storage=True)
    cluster.start()
    term, leader = cluster.wait_agreed(timeout=20)
    follower = next(i for i in ids if i != leader)
    node = cluster[follower]

    node.signal(signal.SIGKILL)
    node.wait(10)
    saved = json.loads(cluster.storage_path(follower).read_text())
    assert saved["term"] == term

    node.start(cluster.args(follower))
    rejoined = cluster.wait_for(
        lambda: (latest := node.latest()) is not None and latest["leader_id"] is not None and latest,
        10,
        f"{follower} to learn the leader after its restart",
    )
    assert (rejoined["term"], rejoined["leader_id"]) == (term, leader)
    first = node.leader_records(node.starts)[0]
    assert first["term"] == term, "the restarted node did not come back with its saved term"
    # Nobody's term went up: the cluster kept its leader.
    assert cluster.agreed(ids) == (term, leader)
    assert max(r["term"] for n in cluster.nodes.values() for r in n.leader_records()) == term
    assert_one_leader_per_term(cluster)


def test_sigterm_on_the_leader_hands_leadership_over(procs: Callable[..., ProcCluster]) -> None:
    ids = ["a", "b", "c"]
    cluster = procs(ids, election_timeout=T)
    cluster.start()
    term, leader = cluster.wait_agreed(timeout=20)
    others = [i for i in ids if i != leader]

    cluster[leader].signal(signal.SIGTERM)
    assert cluster[leader].wait(10) == 0
    stopped = cluster[leader].stopped_record()
    assert stopped is not None
    assert stopped["status"]["transfers_started"] == 1
    assert stopped["status"]["role"] == "terminated"
    new_term, _ = cluster.wait_agreed(others, not_leader=leader, min_term=term + 1, timeout=10)
    # A hand-over elects the target in the next term.  That no election
    # timeout was waited out is checked, by the nodes' counters, in
    # test_handover_processes.py.
    assert new_term == term + 1
    assert_one_leader_per_term(cluster)


def test_sigusr1_transfers_leadership_and_the_node_stays(procs: Callable[..., ProcCluster]) -> None:
    ids = ["a", "b", "c"]
    cluster = procs(ids, election_timeout=T)
    cluster.start()
    term, leader = cluster.wait_agreed(timeout=20)
    cluster[leader].signal(signal.SIGUSR1)
    _, new_leader = cluster.wait_agreed(ids, not_leader=leader, min_term=term + 1, timeout=10)
    assert new_leader != leader
    assert cluster[leader].running
    assert_one_leader_per_term(cluster)
