"""Ports of the Rust crate almost-raft's own four tests (``src/election/mod.rs``).

The crate tests its async loop with a paused tokio clock; here the same
scenarios drive the pure core directly.  Two adaptations:

* The crate's ``min_node`` counts peers only; ``min_nodes`` here counts this
  node too, so the crate's ``min_node = 3`` is ``min_nodes = 4``.
* The crate counts anonymous "yes" answers, and its second test even lists
  a peer id twice.  Votes here are counted by distinct ``voter_id``
  (docs/specification.md, paper 5.2), so a duplicated answer must not elect.
"""

from __future__ import annotations

import pytest

from almost_raft import HardState, LeaderChanged, RequestVote, Role, VoteResponse
from almost_raft._messages import NodeId

from .helpers import PEERS5, Harness, Pump, fresh, heartbeats, requests, role

PRE_VOTE = pytest.mark.parametrize("pre_vote", [False, True], ids=["exact-port", "with-pre-vote"])


@PRE_VOTE
def test_min_node(pre_vote: bool) -> None:
    """Crate ``test_min_node``: no vote request goes out until the cluster reaches ``min_nodes``."""
    h = fresh(peers=(), min_nodes=4, pre_vote=pre_vote)
    assert h.tick().sends == ()
    h.core.add_peer("b", h.now)
    h.core.add_peer("c", h.now)
    for _ in range(3):
        out = h.tick()
        assert out.sends == (), "three of four: not enough nodes, no request for votes"
        assert out.persist is None
        assert h.core.term == 0
        assert h.core.role is Role.FOLLOWER
    h.core.add_peer("d", h.now)
    out = h.tick()
    assert out.sends == requests(1, "a", ("b", "c", "d"), pre_vote=pre_vote)
    assert all(isinstance(m, RequestVote) for _, m in out.sends)


def _stand(pre_vote: bool) -> Harness:
    """A five-node candidate of term 1 after its first timeout, as in the crate."""
    h = fresh(peers=PEERS5, pre_vote=pre_vote, min_nodes=4)
    out = h.tick()
    assert out.sends == requests(1, "a", PEERS5, pre_vote=pre_vote), "four requests, one per peer"
    if pre_vote:
        h.step(VoteResponse(1, "b", True, pre_vote=True))
        out = h.step(VoteResponse(1, "c", True, pre_vote=True))
        assert out.sends == requests(1, "a", PEERS5)
    assert h.core.role is Role.CANDIDATE
    assert h.core.term == 1
    return h


@PRE_VOTE
def test_raft_election(pre_vote: bool) -> None:
    """Crate ``test_raft_election``: collecting a quorum of votes makes a leader that heartbeats every peer.

    Adapted: the duplicated answer from ``b`` counts once, so only the answer
    of a second voter elects.
    """
    h = _stand(pre_vote)
    term = 1
    for _ in range(2):
        out = h.step(VoteResponse(term, "b", True))
        assert out.events == ()
        assert out.sends == ()
        assert h.core.role is Role.CANDIDATE, "a duplicated vote must not elect"
    out = h.step(VoteResponse(term, "c", True))
    assert h.core.role is Role.LEADER
    assert out.events == (LeaderChanged(term, "a"),)
    assert out.sends == heartbeats(term, "a", 1, PEERS5), "one heartbeat to every peer, nothing else"
    assert out.persist is None
    # Nothing more is sent until the next heartbeat is due.
    assert h.tick(0.0).sends == ()
    assert h.tick().sends == heartbeats(term, "a", 2, PEERS5)


@PRE_VOTE
def test_raft_election_multi_term(pre_vote: bool) -> None:
    """Crate ``test_raft_election_multi_term``: a failed round retries with ``term + 1``.

    One vote of four peers is no quorum of five; at the next timeout the node
    asks again for term 2 (with pre-vote: it first asks for pre-votes for term
    2 without raising its term), and two votes for term 2 then elect it.
    """
    h = _stand(pre_vote)
    h.step(VoteResponse(1, "b", True))
    assert h.core.role is Role.CANDIDATE
    out = h.tick()
    if pre_vote:
        assert out.sends == requests(2, "a", PEERS5, pre_vote=True)
        assert h.core.term == 1
        assert out.persist is None
        h.step(VoteResponse(2, "d", True, pre_vote=True))
        out = h.step(VoteResponse(2, "e", True, pre_vote=True))
    assert out.sends == requests(2, "a", PEERS5)
    assert out.persist == HardState(2, "a")
    assert h.core.term == 2
    # A late vote for term 1 does not count in term 2.
    h.step(VoteResponse(1, "c", True))
    h.step(VoteResponse(2, "b", True))
    assert h.core.role is Role.CANDIDATE
    out = h.step(VoteResponse(2, "c", True))
    assert role(h) is Role.LEADER
    assert out.events == (LeaderChanged(2, "a"),)


def _multi_node_pump() -> Pump:
    # The crate's three nodes with fixed timeouts of 60, 70 and 80 ms (equal
    # bounds: no randomness), a 20 ms heartbeat and min_node = 2 (peers),
    # started with no peers and introduced to each other by AddNode.
    ids = ("raft-node-1", "raft-node-2", "raft-node-3")
    members: dict[NodeId, Harness] = {
        i: fresh(
            i,
            (),
            election_timeout=t,
            election_timeout_max=t,
            heartbeat_interval=0.02,
            min_nodes=3,
            lease_duration=0.9 * t,
        )
        for i, t in zip(ids, (0.060, 0.070, 0.080), strict=True)
    }
    pump = Pump(members, persisted=dict.fromkeys(ids))
    for i in ids:
        for p in ids:
            if p != i:
                pump.call(i, lambda core, now, p=p: core.add_peer(p, now))  # type: ignore[misc]
    return pump


def test_raft_election_multi_node() -> None:
    """Crate ``test_raft_election_multi_node``: three nodes that find each other elect one leader.

    The crate expects the node with the shortest timeout to win.  Here a node
    that has just started refuses votes for ``T`` (so a restart cannot cut a
    lease short), which can cost the first node its first round, so the
    winner is not pinned; what must hold is one leader, known to all, and
    never two leaders in one term.
    """
    pump = _multi_node_pump()
    pump.run(until=0.5)
    leaders = pump.leaders()
    assert len(leaders) == 1
    ((winner, term),) = leaders.items()
    for h in pump.members.values():
        assert (h.core.term, h.core.leader_id) == (term, winner)
    assert all(len(ids) == 1 for ids in pump.winners.values())
    # The run is deterministic: the same cores and timeouts elect the same leader.
    again = _multi_node_pump()
    again.run(until=0.5)
    assert again.leaders() == leaders
