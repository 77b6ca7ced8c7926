"""Real partitions: node processes in network namespaces on one switch, cut off and healed.

Five ``python -m almost_raft`` processes run in five namespaces of a switch
the tests build (``_netns.Switch``); two of them run on trio.  A partition is
a switch port set down (or moved to a second bridge, for a minority that
still reaches itself), with no reset and no ICMP error; the heal sets it up
again.  Each test checks safety from every line the nodes printed: at most
one leader named per term, by all nodes together, and terms that never go
down on any node; and that after the heal every node names the same leader.
How fast the heal is, is measured by ``benchmarks/heal_time.py``, not here.

The tests need root and the ``ip`` command, and are skipped without them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ._netns import Switch, unavailable
from ._procs import ProcCluster, Record
from .test_processes import assert_one_leader_per_term, assert_terms_never_decrease

pytestmark = pytest.mark.slow

T = 0.15
IDS = ["n1", "n2", "n3", "n4", "n5"]
TRIO_NODES = ("n2", "n4")
"""Nodes run on trio (the others on asyncio), so both backends meet over a real network."""


@pytest.fixture(scope="module")
def switch() -> Iterator[Switch]:
    """Five host namespaces on one switch, for the whole module; deleted at its end, pass or fail."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    built = Switch(len(IDS))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def cluster(switch: Switch, procs: Callable[..., ProcCluster]) -> ProcCluster:
    """A running five-node cluster, one node per namespace, the switch whole again."""
    every = range(len(IDS))
    switch.join(every)
    switch.heal(every)
    made = procs(
        IDS,
        election_timeout=T,
        hosts={node_id: switch.address(i) for i, node_id in enumerate(IDS)},
        prefixes={node_id: switch.exec_prefix(i) for i, node_id in enumerate(IDS)},
        per_node={node_id: ["--backend", "trio"] for node_id in TRIO_NODES},
    )
    made.start()
    return made


def index(node_id: str) -> int:
    return IDS.index(node_id)


def latest_view(cluster: ProcCluster, node_id: str) -> Record | None:
    return cluster[node_id].latest()


def assert_safe(cluster: ProcCluster) -> None:
    assert_one_leader_per_term(cluster)
    assert_terms_never_decrease(cluster)


def test_an_isolated_follower_rejoins(cluster: ProcCluster, switch: Switch) -> None:
    term, leader = cluster.wait_agreed(timeout=20)
    follower = next(i for i in IDS if i != leader)
    others = [i for i in IDS if i != follower]
    seen = len(cluster[follower].leader_records())

    switch.cut([index(follower)])
    # It stops hearing the leader and says so; pre-vote keeps it from raising
    # the term, so the others keep their leader meanwhile.
    cluster.wait_for(
        lambda: any(r["leader_id"] is None for r in cluster[follower].leader_records()[seen:]),
        10,
        f"the isolated {follower} to lose its leader",
    )
    assert cluster.agreed(others) is not None
    switch.heal([index(follower)])

    cluster.wait_agreed(timeout=20, min_term=term)
    assert_safe(cluster)


def test_an_isolated_leader_is_replaced_and_follows_after_the_heal(cluster: ProcCluster, switch: Switch) -> None:
    term, leader = cluster.wait_agreed(timeout=20)
    others = [i for i in IDS if i != leader]
    seen = len(cluster[leader].leader_records())

    switch.cut([index(leader)])
    new_term, _ = cluster.wait_agreed(others, not_leader=leader, min_term=term + 1, timeout=20)
    # Check-quorum: the cut-off leader stops believing it leads.
    cluster.wait_for(
        lambda: any(r["leader_id"] != leader for r in cluster[leader].leader_records()[seen:]),
        10,
        f"the isolated leader {leader} to step down",
    )
    switch.heal([index(leader)])

    final_term, _ = cluster.wait_agreed(timeout=20, min_term=new_term)
    assert final_term >= new_term > term
    assert_safe(cluster)


def test_a_minority_with_the_leader_cannot_elect_and_rejoins(cluster: ProcCluster, switch: Switch) -> None:
    term, leader = cluster.wait_agreed(timeout=20)
    buddy = next(i for i in IDS if i != leader)
    minority = [leader, buddy]
    majority = [i for i in IDS if i not in minority]

    switch.split([index(i) for i in minority])  # the two still reach each other
    new_term, new_leader = cluster.wait_agreed(majority, min_term=term + 1, timeout=20)
    assert new_leader in majority
    cluster.wait_for(
        lambda: all((view := latest_view(cluster, i)) is not None and view["leader_id"] is None for i in minority),
        10,
        "the minority to know it has no leader",
    )
    split_records = {i: list(cluster[i].leader_records()) for i in minority}
    switch.join([index(i) for i in minority])

    cluster.wait_agreed(timeout=20, min_term=new_term)
    # While cut off, two of five never made a leader of their own.
    for node_id, records in split_records.items():
        claims = {(r["term"], r["leader_id"]) for r in records if r["term"] > term and r["leader_id"] is not None}
        assert all(leader_id in majority for _, leader_id in claims), (node_id, claims)
    assert_safe(cluster)


def test_without_the_rights_the_reason_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert unavailable() == "needs the 'ip' command (iproute2) to build network namespaces"
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert unavailable() == "needs root to build network namespaces (ip netns add)"
