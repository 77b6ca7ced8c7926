"""One scenario per fault kind, each showing the behaviour docs/specification.md promises.

Every scenario runs with the safety checker on, so each also shows that the
fault breaks no rule; the scenarios where a rule *must* break (a restart
without storage, clock drift beyond the configured bound) show that the
checker catches it.
"""

from __future__ import annotations

import pytest

from almost_raft import Heartbeat, Role
from almost_raft.testing import (
    FixedDelay,
    LinkFaults,
    LogNormalDelay,
    SafetyViolation,
    Simulation,
    UniformDelay,
)
from almost_raft.testing._safety import ONE_LEASE_AT_A_TIME, ONE_VOTE_PER_TERM

from .helpers import T, leaders_now, wait_leader, wait_leader_among, wait_lease_extended

# --------------------------------------------------------------- the network


@pytest.mark.parametrize(
    "delay",
    [FixedDelay(0.001), UniformDelay(0.0005, 0.030), LogNormalDelay(median=0.002, sigma=1.5, cap=0.4)],
    ids=["fixed", "uniform-wide", "long-tail"],
)
def test_any_delay_distribution_elects_a_leader(delay: FixedDelay | UniformDelay | LogNormalDelay) -> None:
    sim = Simulation(5, seed=3, link=LinkFaults(delay=delay))
    wait_leader(sim, timeout=5.0)
    sim.run_for(20.0)
    wait_leader(sim, timeout=5.0)
    assert sim.stats.deliveries > 1000


def test_reordered_heartbeats_are_harmless() -> None:
    # Every other message is held back by up to 3 heartbeat intervals.
    sim = Simulation(3, seed=8, link=LinkFaults(delay=UniformDelay(0.0005, 0.002), reorder=0.5, reorder_delay=0.15))
    leader = wait_leader(sim)
    sim.run_for(10.0)
    follower = next(i for i in sim.node_ids if i != leader)
    seqs = [
        detail[1].seq
        for _, kind, node, detail, _ in sim.transcript.entries()
        if kind == "deliver"
        and node == follower
        and isinstance(detail, tuple)
        and isinstance(detail[1], Heartbeat)
        and detail[1].term == sim.core(leader).term
    ]
    assert len(seqs) > 100
    assert seqs != sorted(seqs), "the link did reorder heartbeats"
    # The leader never lost its place: one election in all.
    assert sim.stable_leader() == leader
    assert len(sim.elections) == 1


def test_a_lossy_network_still_elects_and_keeps_the_rules() -> None:
    sim = Simulation(5, seed=21, link=LinkFaults(loss=0.3))
    wait_leader(sim, timeout=10.0)
    sim.run_for(30.0)
    assert sim.stats.lost > 1000
    assert len(sim.elections) >= 1


def test_duplicated_votes_count_once() -> None:
    """Every message arrives twice: a candidate still needs a quorum of distinct voters."""
    sim = Simulation(3, seed=5, link=LinkFaults(duplicate=1.0))
    sim.crash("c")  # one voter left: a doubled grant must not look like two
    sim.pause("b")
    sim.run_for(2.0)
    assert leaders_now(sim) == []
    sim.resume("b")
    leader = wait_leader_among(sim, ["a", "b"])
    assert sim.stats.duplicated > 0
    sim.restart("c")
    sim.run_for(5.0)
    assert sim.stable_leader() == leader


# ---------------------------------------------------------------- partitions


def test_a_leader_in_the_minority_steps_down_and_the_majority_elects() -> None:
    sim = Simulation(5, seed=2)
    old = wait_leader(sim)
    others = [i for i in sim.node_ids if i != old]
    minority, majority = [old, others[0]], others[1:]
    sim.partition(minority, majority)
    cut_at = sim.now
    new = wait_leader_among(sim, majority, timeout=1.0)
    assert new != old
    # Check-quorum: the old leader stops believing it leads within T plus a heartbeat interval.
    assert sim.run_until_true(lambda: sim.core(old).role is not Role.LEADER, timeout=T + T / 3 + 0.01)
    assert sim.now - cut_at <= T + T / 3 + 0.01
    sim.heal_all()
    elections = len(sim.elections)
    sim.run_for(2.0)
    # Back together: the old leader follows the new one and nobody stands again.
    assert sim.stable_leader() == new
    assert len(sim.elections) == elections


def test_a_leader_that_cannot_hear_steps_down_and_the_rest_elect() -> None:
    """A one-way partition: the leader's heartbeats go out, nothing comes back."""
    sim = Simulation(5, seed=4)
    old = wait_leader(sim)
    others = [i for i in sim.node_ids if i != old]
    for other in others:
        sim.cut(other, old, both_ways=False)
    assert sim.run_until_true(lambda: sim.core(old).role is not Role.LEADER, timeout=T + T / 3 + 0.01)
    new = wait_leader_among(sim, others, timeout=2.0)
    assert new != old
    sim.run_for(3.0)
    # The deaf node cannot disturb the others: it gets no answers, and its
    # pre-votes meet sticky followers.
    assert sim.stable_leader(others) == new
    sim.heal_all()
    sim.run_for(1.0)
    assert sim.stable_leader() == new


def test_a_follower_that_cannot_hear_the_leader_does_not_depose_it() -> None:
    """A one-way partition the other way round: pre-vote keeps the follower's term down."""
    sim = Simulation(3, seed=6)
    leader = wait_leader(sim)
    term = sim.core(leader).term
    deaf = next(i for i in sim.node_ids if i != leader)
    sim.cut(leader, deaf, both_ways=False)
    sim.run_for(5.0)
    assert sim.core(leader).role is Role.LEADER
    assert sim.core(leader).term == term
    assert sim.core(deaf).term == term
    assert sim.core(deaf).counters.pre_votes_started > 5
    assert len(sim.elections) == 1


def test_partial_partition_three_nodes_the_leader_keeps_its_follower() -> None:
    """The leader reaches only one follower: it keeps a quorum, and the cut-off node cannot disturb it."""
    sim = Simulation(3, seed=7)
    leader = wait_leader(sim)
    term = sim.core(leader).term
    kept, lost = [i for i in sim.node_ids if i != leader]
    sim.partial_partition(leader, [kept])
    sim.run_for(5.0)
    assert sim.core(leader).role is Role.LEADER
    assert sim.core(leader).term == term
    assert sim.holds_lease(leader)
    assert sim.core(lost).term == term
    assert len(sim.elections) == 1


def test_partial_partition_five_nodes_a_new_stable_leader() -> None:
    """The leader reaches only one of four followers: check-quorum retires it, pre-vote keeps it out.

    The three it cannot reach elect one of themselves; the node still linked
    to the old leader follows the new one; the old leader, cut off from the
    new one, can neither win (its pre-votes meet sticky followers) nor
    disturb anyone, so the new leader stays.
    """
    sim = Simulation(5, seed=9)
    old = wait_leader(sim)
    rest = [i for i in sim.node_ids if i != old]
    sim.partial_partition(old, [rest[0]])
    new = wait_leader_among(sim, rest, timeout=2 * 2 * T + 0.05)
    assert new != old
    assert sim.core(old).role is not Role.LEADER
    elections = len(sim.elections)
    sim.run_for(10.0)
    assert sim.stable_leader(rest) == new
    assert len(sim.elections) == elections
    assert sim.core(old).counters.pre_votes_started > 10


# -------------------------------------------------------- crashes and restarts


def test_a_crashed_leader_is_replaced_and_rejoins_without_disruption() -> None:
    sim = Simulation(5, seed=10)
    old = wait_leader(sim)
    sim.crash(old)
    new = wait_leader(sim, timeout=2 * 2 * T)
    assert new != old
    sim.run_for(1.0)
    sim.restart(old)
    elections = len(sim.elections)
    sim.run_for(3.0)
    assert sim.stable_leader() == new
    assert len(sim.elections) == elections
    assert sim.core(old).term == sim.core(new).term


def _double_vote_scenario(storage: bool) -> Simulation:
    """b is frozen; a and c elect one of them; the voter restarts (with or without storage); b stands."""
    sim = Simulation(3, seed=1, link=LinkFaults(delay=FixedDelay(0.001)))
    sim.pause("b")
    assert sim.run_until_true(lambda: bool(leaders_now(sim)), timeout=2.0)
    (leader,) = leaders_now(sim)
    voter = "c" if leader == "a" else "a"
    assert sim.core(voter).voted_for == leader
    sim.crash(voter)
    sim.isolate(leader)
    sim.restart(voter, storage=storage)
    sim.resume("b")
    sim.run_for(3.0)
    return sim


def test_a_restart_without_storage_can_vote_twice_and_the_checker_catches_it() -> None:
    with pytest.raises(SafetyViolation) as caught:
        _double_vote_scenario(storage=False)
    violation = caught.value.violation
    assert violation.rule == ONE_VOTE_PER_TERM
    assert violation.term == 1
    text = str(caught.value)
    assert "seed 1" in text
    assert "WITHOUT storage" in text
    assert "VoteResponse t1 granted" in text


def test_the_same_restart_with_storage_votes_once() -> None:
    sim = _double_vote_scenario(storage=True)
    # The voter remembered its vote for term 1, so the next leader came from term 2.
    (first_term, first), (second_term, second) = [(term, who) for _, term, who in sim.elections]
    assert (first_term, second_term) == (1, 2)
    assert second != first
    assert sim.stable_leader([i for i in sim.node_ids if i != first]) == second
    assert sim.violation is None


# -------------------------------------------------------------------- pauses


def test_a_paused_leader_wakes_without_its_lease_and_steps_down() -> None:
    sim = Simulation(3, seed=12)
    old = wait_leader(sim)
    wait_lease_extended(sim, old)
    sim.pause(old)
    paused_at = sim.now
    seen: dict[str, object] = {}

    def wake(s: Simulation) -> None:
        core = s.core(old)
        seen["role"] = core.role
        seen["lease"] = core.holds_lease(s.local_time(old))
        seen["lease_end"] = core.lease_expires_at
        s.resume(old)
        seen["after"] = s.core(old).role

    sim.at(paused_at + 4 * T, wake, "wake the old leader")
    new = wait_leader_among(sim, [i for i in sim.node_ids if i != old], timeout=4 * T)
    assert new != old
    sim.run_until(paused_at + 4 * T + 0.5)
    # Frozen, it still thought it led; it woke up with its lease long gone and
    # its first act was to step down (check-quorum), before reading a message.
    assert seen["role"] is Role.LEADER
    assert seen["lease"] is False
    assert isinstance(seen["lease_end"], float)
    assert seen["lease_end"] < paused_at + T
    assert seen["after"] is Role.FOLLOWER
    assert sim.stable_leader() == new


def test_a_short_pause_keeps_the_leader_and_nobody_stands() -> None:
    sim = Simulation(3, seed=13)
    leader = wait_leader(sim)
    sim.pause(leader)
    sim.after(0.3 * T, lambda s: s.resume(leader))
    sim.run_for(3.0)
    assert sim.stable_leader() == leader
    assert len(sim.elections) == 1


# --------------------------------------------------------------- clock drift


def _drift_scenario(rate_spread: float) -> Simulation:
    """The worst case for the lease: a slow leader, fast followers, and the leader cut off just after a renewal."""
    sim = Simulation(
        3,
        seed=14,
        election_timeout_max=T,  # followers stand exactly when their stickiness ends
        clock_drift=0.01,
        link=LinkFaults(delay=FixedDelay(0.0001)),
    )
    leader = wait_leader(sim)
    for node_id in sim.node_ids:
        sim.set_clock_rate(node_id, 1 - rate_spread if node_id == leader else 1 + rate_spread)
    sim.run_for(1.0)
    wait_lease_extended(sim, leader)
    sim.isolate(leader)
    sim.run_for(1.0)
    return sim


def test_drift_within_the_bound_never_gives_two_leases() -> None:
    sim = _drift_scenario(0.01)
    # A new leader took over, after the old lease ended (the checker saw to that).
    assert len(sim.elections) == 2
    assert sim.violation is None


def test_drift_beyond_the_bound_can_give_two_leases_and_the_checker_catches_it() -> None:
    with pytest.raises(SafetyViolation) as caught:
        _drift_scenario(0.03)
    assert caught.value.violation.rule == ONE_LEASE_AT_A_TIME
    assert "+lease" in str(caught.value)


# ---------------------------------------------------------- a node comes back


@pytest.mark.parametrize("pre_vote", [True, False], ids=["pre-vote", "no-pre-vote"])
def test_an_isolated_node_that_comes_back(pre_vote: bool) -> None:
    """Pre-vote: the returning node changes nothing.  Without it, it deposes the leader."""
    sim = Simulation(5, seed=15, pre_vote=pre_vote)
    leader = wait_leader(sim)
    loner = next(i for i in sim.node_ids if i != leader)
    sim.isolate(loner)
    sim.run_for(5.0)
    sim.heal_all()
    before = len(sim.elections)
    sim.run_for(5.0)
    wait_leader(sim)
    changes = len(sim.elections) - before
    if pre_vote:
        assert changes == 0
        assert sim.stable_leader() == leader
    else:
        assert changes >= 1


# ---------------------------------------------------------------- transfer


def test_leadership_transfer_hands_over_without_two_leases() -> None:
    sim = Simulation(5, seed=16)
    old = wait_leader(sim)
    target = next(i for i in sim.node_ids if i != old)
    wait_lease_extended(sim, old)
    sim.transfer_leadership(old, target)
    assert not sim.holds_lease(old)
    assert sim.run_until_true(lambda: sim.stable_leader() == target, timeout=T)
    sim.run_for(2.0)
    assert sim.stable_leader() == target
