"""Regression tests for the safety bugs the simulator found in the core, each from the run that showed it.

1. Removing the leader from a follower's view reset that follower's leader
   stickiness and let it stand (and vote) at once.  The old leader, which
   did not know, still held a lease that this follower had acknowledged:
   a second node got a lease before the first one's ended ("one lease at a
   time").  Fixed in ``Election.remove_peer`` (stickiness stays) and
   ``Election._postpone_candidacy`` (a sticky node does not vote for itself
   either).
"""

from __future__ import annotations

import pytest

from almost_raft import Role
from almost_raft.testing import FixedDelay, LinkFaults, Simulation

from .helpers import T, wait_leader


@pytest.mark.parametrize("pre_vote", [True, False], ids=["pre-vote", "no-pre-vote"])
def test_removing_the_leader_from_one_view_does_not_cut_its_lease_short(pre_vote: bool) -> None:
    sim = Simulation(3, seed=1, pre_vote=pre_vote, link=LinkFaults(delay=FixedDelay(0.001)))
    leader = wait_leader(sim)
    remover, other = (i for i in sim.node_ids if i != leader)
    # "other" stops hearing the leader, so it is no longer sticky; the leader
    # keeps its quorum, and its lease, through "remover".
    sim.cut(leader, other)
    sim.run_for(T + T / 3)
    assert sim.holds_lease(leader)
    lease_end = sim.core(leader).lease_expires_at
    sim.remove_peer(remover, leader)
    # Before the fix, "remover" and "other" elected one of them at once and
    # the checker stopped the run here with two leases at the same instant.
    sim.run_for(2.0)
    assert sim.violation is None
    (first, _, _), (when, term, winner) = sim.elections[0], sim.elections[-1]
    assert winner in (remover, other)
    assert term > sim.elections[0][1]
    assert when >= lease_end, "the new leader came after the old lease ended"
    assert first < when
    assert sim.core(winner).role is Role.LEADER


@pytest.mark.parametrize("pre_vote", [True, False], ids=["pre-vote", "no-pre-vote"])
def test_removing_the_leader_from_one_view_under_many_timings(pre_vote: bool) -> None:
    """Before the fix, 26 of these 40 seeds ended with two leases (with or without pre-vote)."""
    for seed in range(40):
        sim = Simulation(3, seed=seed, pre_vote=pre_vote, link=LinkFaults(delay=FixedDelay(0.001)))
        leader = wait_leader(sim)
        remover, other = (i for i in sim.node_ids if i != leader)
        sim.cut(leader, other)
        sim.run_for(T + T / 3)
        sim.remove_peer(remover, leader)
        sim.run_for(2.0)
        assert sim.violation is None
