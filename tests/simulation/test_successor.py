"""Failover without waiting for a random timer, in the simulator, under the safety checker (issue 13).

One scenario per promise of docs/specification.md, "Designated successor",
"Connection closed" and "Transfer": the successor named by a crashed leader
is the one that replaces it; a successor that died with it, is cut off, is
paused, or disagrees with its peers about who was named costs only what a
randomized election costs; a spurious connection-closed notice disturbs
nobody; a handover to a dead or cut-off target completes by ``TimeoutNow``
to another peer.  Every step of every node is checked, so each scenario also
shows that none of this breaks a rule.  The last test shows that the checker
catches a successor that would not wait for its own stickiness window.
"""

from __future__ import annotations

import pytest

from almost_raft import RequestVote, Role
from almost_raft._core import Election
from almost_raft._messages import NodeId
from almost_raft.testing import SafetyViolation, Simulation
from almost_raft.testing._safety import ONE_LEASE_AT_A_TIME

from .helpers import T, wait_leader, wait_leader_among, wait_lease_extended

T_MAX = 2 * T
DELAY = 0.0015  # the default link's largest one-way delay
SEEDS = range(12)


def _named(sim: Simulation, leader: NodeId) -> NodeId:
    named = sim.core(leader).named_successor
    assert named is not None
    assert named != leader
    # Every follower heard the same name (the leader keeps it while it acknowledges).
    sim.run_for(T / 3)
    assert all(sim.core(i).named_successor == named for i in sim.node_ids if i != leader)
    return named


def _pre_votes(sim: Simulation, node_id: NodeId) -> int:
    return sim.core(node_id).counters.pre_votes_started


@pytest.mark.parametrize("seed", SEEDS)
def test_a_crashed_leader_is_replaced_by_its_successor_before_any_random_timer(seed: int) -> None:
    sim = Simulation(5, seed=seed)
    old = wait_leader(sim)
    sim.run_for(1.0)
    named = _named(sim, old)
    others = [i for i in sim.node_ids if i not in (old, named)]
    before = {i: _pre_votes(sim, i) for i in others}
    sim.crash(old)
    crashed = sim.now
    survivors = [i for i in sim.node_ids if i != old]
    new = wait_leader_among(sim, survivors, timeout=T + 20 * DELAY)
    assert new == named
    assert sim.now - crashed <= T + 10 * DELAY
    assert {i: _pre_votes(sim, i) for i in others} == before, "nobody else stood"


@pytest.mark.parametrize("seed", SEEDS)
def test_with_connection_notices_the_successor_wins_sooner_never_before_the_windows_end(seed: int) -> None:
    """Connection closed: it asks for pre-votes at once; voters answer when their windows end."""
    sim = Simulation(5, seed=seed, disconnect_notice=True)
    old = wait_leader(sim)
    sim.run_for(1.0)
    named = _named(sim, old)
    sim.crash(old)
    survivors = [i for i in sim.node_ids if i != old]
    # The last heartbeat each survivor accepted: nobody may win before every window of a quorum ended.
    heard = sorted(sim.node(i).true(sim.core(i).last_leader_contact) for i in survivors)
    new = wait_leader_among(sim, survivors, timeout=T + 20 * DELAY)
    assert new == named
    won_at = sim.elections[-1][0]
    assert won_at >= heard[1] + T * (1 - 0.01), "a quorum of three: two windows besides its own had ended"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_successor_that_died_with_the_leader_costs_a_randomized_election(seed: int) -> None:
    sim = Simulation(5, seed=seed)
    old = wait_leader(sim)
    sim.run_for(1.0)
    named = _named(sim, old)
    sim.crash(named)
    sim.crash(old)
    rest = [i for i in sim.node_ids if i not in (old, named)]
    wait_leader_among(sim, rest, timeout=T_MAX + 20 * DELAY)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_successor_cut_off_from_the_leader_only_deposes_nobody(seed: int) -> None:
    """It stands at ``T``; the others still hear the leader and hold its pre-votes; the leader names another."""
    sim = Simulation(5, seed=seed)
    old = wait_leader(sim)
    sim.run_for(1.0)
    named = _named(sim, old)
    elections = len(sim.elections)
    sim.cut(old, named)
    sim.run_for(3 * T_MAX)
    assert sim.stable_leader([i for i in sim.node_ids if i != named]) == old
    assert _pre_votes(sim, named) > 0, "it did stand"
    assert sim.core(old).named_successor not in (None, named), "the leader named another"
    sim.heal(old, named)
    sim.run_for(3 * T_MAX)
    assert sim.stable_leader() == old
    assert len(sim.elections) == elections


@pytest.mark.parametrize("seed", SEEDS)
def test_an_isolated_successor_comes_back_without_a_leader_change(seed: int) -> None:
    sim = Simulation(5, seed=seed)
    old = wait_leader(sim)
    sim.run_for(1.0)
    named = _named(sim, old)
    elections = len(sim.elections)
    sim.isolate(named)
    sim.run_for(2.0)
    sim.heal_all()
    sim.run_for(2.0)
    assert sim.stable_leader() == old
    assert len(sim.elections) == elections


@pytest.mark.parametrize("seed", SEEDS)
def test_a_paused_successor_wakes_late_and_follows(seed: int) -> None:
    """Its timer fires more than ``T / 2`` late: let go once; the leader's heartbeats that waited keep it a follower."""
    sim = Simulation(5, seed=seed)
    old = wait_leader(sim)
    sim.run_for(1.0)
    named = _named(sim, old)
    elections = len(sim.elections)
    sim.pause(named)
    sim.run_for(3 * T)
    sim.resume(named)
    sim.run_for(2.0)
    assert sim.stable_leader() == old
    assert len(sim.elections) == elections


@pytest.mark.parametrize("seed", SEEDS)
def test_a_successor_paused_when_the_leader_crashes_is_replaced_by_the_others(seed: int) -> None:
    sim = Simulation(5, seed=seed)
    old = wait_leader(sim)
    sim.run_for(1.0)
    named = _named(sim, old)
    sim.pause(named)
    sim.crash(old)
    rest = [i for i in sim.node_ids if i not in (old, named)]
    new = wait_leader_among(sim, rest, timeout=T_MAX + 20 * DELAY)
    sim.resume(named)
    sim.run_for(1.0)
    assert sim.stable_leader([i for i in sim.node_ids if i != old]) == new


@pytest.mark.parametrize("seed", SEEDS)
def test_two_nodes_that_each_believe_they_were_named_elect_one_leader(seed: int) -> None:
    """Disagreement: the successor stops hearing the leader, which names another; then the leader crashes.

    The old successor stands first, its pre-votes are held until the others'
    windows end, and the new successor stands at that instant too: both may
    run, one wins (the split-vote rule settles a tie), and no rule breaks.
    """
    sim = Simulation(5, seed=seed)
    old = wait_leader(sim)
    sim.run_for(1.0)
    first = _named(sim, old)
    sim.cut(old, first, both_ways=False)
    assert sim.run_until_true(lambda: sim.core(old).named_successor not in (None, first), timeout=T)
    second = sim.core(old).named_successor
    assert second is not None
    sim.run_for(T / 3)
    assert sim.core(first).named_successor == first, "it never heard that it was replaced"
    assert sim.core(second).named_successor == second
    sim.run_for(T / 4)
    sim.crash(old)
    sim.heal_all()
    survivors = [i for i in sim.node_ids if i != old]
    new = wait_leader_among(sim, survivors, timeout=2 * T_MAX)
    assert new in (first, second)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_spurious_connection_notice_changes_no_leader(seed: int) -> None:
    """The successor is told its live leader's connection closed: it asks for pre-votes, which are held, and follows on."""
    sim = Simulation(5, seed=seed)
    old = wait_leader(sim)
    sim.run_for(1.0)
    named = _named(sim, old)
    elections = len(sim.elections)
    sim.peer_disconnected(named, old)
    assert sim.core(named).role is Role.CANDIDATE
    sim.run_for(3 * T_MAX)
    assert sim.stable_leader() == old
    assert len(sim.elections) == elections


def _transfer_to_a_lost_target(seed: int, *, crash: bool) -> None:
    sim = Simulation(5, seed=seed)
    old = wait_leader(sim)
    sim.run_for(1.0)
    wait_lease_extended(sim, old)
    target = next(i for i in sim.node_ids if i != old)
    if crash:
        sim.crash(target)
    else:
        sim.isolate(target)
    sim.transfer_leadership(old, target)
    asked = sim.now
    assert not sim.holds_lease(old)
    rest = [i for i in sim.node_ids if i != target]
    assert sim.run_until_true(lambda: sim.stable_leader(rest) not in (None, old), timeout=T)
    new = sim.stable_leader(rest)
    assert new is not None
    term = sim.core(new).term
    assert sim.now - asked < T / 2, "well before the transfer deadline: no election timeout was waited for"
    assert sim.core(old).counters.transfer_retries >= 1
    transfer_votes = [
        detail[1]
        for _, kind, node, detail, _ in sim.transcript.entries()
        if kind == "deliver"
        and isinstance(detail, tuple)
        and isinstance(detail[1], RequestVote)
        and detail[1].candidate_id == new
        and detail[1].term == term
    ]
    assert transfer_votes
    assert all(m.transfer for m in transfer_votes), "it won by TimeoutNow"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_transfer_to_a_crashed_target_completes_through_the_next_best_peer(seed: int) -> None:
    _transfer_to_a_lost_target(seed, crash=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_transfer_to_a_cut_off_target_completes_through_the_next_best_peer(seed: int) -> None:
    _transfer_to_a_lost_target(seed, crash=False)


def _spurious_notice_to_the_lease_holder(sim: Simulation) -> NodeId:
    """a leads on b's acknowledgements, c has not heard a for more than ``T``; b is told a went, and a stops hearing b.

    Returns the leader.
    """
    old = wait_leader(sim)
    named = _named(sim, old)
    (other,) = [i for i in sim.node_ids if i not in (old, named)]
    sim.cut(old, other)
    sim.run_for(T + T / 3)
    wait_lease_extended(sim, old)
    sim.cut(named, old, both_ways=False)
    sim.peer_disconnected(named, old)
    sim.run_for(T / 10)
    return old


def test_a_successor_waits_for_its_own_window_and_no_lease_is_cut_short() -> None:
    """With the rule: b's pre-vote quorum (b, c) waits for b's window, which a's heartbeats keep open."""
    sim = Simulation(["a", "b", "c"], seed=3)
    old = _spurious_notice_to_the_lease_holder(sim)
    elections = len(sim.elections)
    sim.run_for(T / 2)
    assert sim.core(old).role is Role.LEADER
    assert len(sim.elections) == elections


def test_a_successor_that_does_not_wait_for_its_own_window_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker can fail: a successor that votes for itself at once on a notice cuts the leader's lease short.

    The same scenario with a planted bug: b raises its term and votes for
    itself inside its own stickiness window; c grants, and b leads, and soon
    holds a lease, while a still holds its own.
    """
    original = Election._start_campaign

    def impatient(self: Election, now: float) -> None:
        if self.role is Role.FOLLOWER and self.leader_id is not None:
            self._become_candidate(now, transfer=False)
            return
        original(self, now)

    monkeypatch.setattr(Election, "_start_campaign", impatient)
    with pytest.raises(SafetyViolation) as caught:
        _spurious_notice_to_the_lease_holder(Simulation(["a", "b", "c"], seed=3))
    assert caught.value.violation.rule == ONE_LEASE_AT_A_TIME
