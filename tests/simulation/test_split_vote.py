"""The split-vote rule (``Config.split_vote_retry``): out of a split vote in one round, never less safe.

With fixed timeouts and fixed delays every follower times out at the same
instant when the leader dies, so every round splits.  Without the rule the
cluster never elects anyone; with it, the candidates that lost step back,
one stands again at once and wins.
"""

from __future__ import annotations

import pytest

from almost_raft import Role
from almost_raft.testing import FixedDelay, LinkFaults, RandomFaults, Simulation

from .helpers import T, wait_leader


def _everyone_times_out_together(split_vote_retry: bool) -> tuple[Simulation, int]:
    sim = Simulation(
        5,
        seed=3,
        election_timeout_max=T,
        split_vote_retry=split_vote_retry,
        link=LinkFaults(delay=FixedDelay(0.001)),
    )
    # Only the first election needs a nudge: "a"'s clock runs fast until it leads.
    sim.set_clock_rate("a", 1.05)
    assert wait_leader(sim) == "a"
    sim.set_clock_rate("a", 1.0)
    sim.run_for(1.0)
    sim.crash("a")
    return sim, sim.split_votes


def test_without_the_rule_a_perfect_tie_splits_forever() -> None:
    sim, splits = _everyone_times_out_together(split_vote_retry=False)
    assert not sim.run_until_true(lambda: sim.stable_leader() is not None, timeout=3.0)
    assert sim.split_votes - splits >= 10


def test_with_the_rule_a_perfect_tie_is_broken_in_one_round() -> None:
    sim, splits = _everyone_times_out_together(split_vote_retry=True)
    crashed = sim.now
    assert sim.run_until_true(lambda: sim.stable_leader() is not None, timeout=3.0)
    # One timeout, one split round, then one more round of pre-vote and vote
    # (2 ms each here): well under a second timeout.
    assert sim.now - crashed < T + 0.010
    assert sim.split_votes - splits == 1
    leader = sim.stable_leader()
    assert leader is not None
    survivors = sorted(str(i) for i in sim.node_ids if sim.status(i) == "up")
    assert str(leader) == survivors[0], "the lowest id stands again; the others step back"
    for node_id in sim.node_ids:
        if sim.status(node_id) == "up" and node_id != leader:
            assert sim.core(node_id).role is Role.FOLLOWER


@pytest.mark.parametrize("pre_vote", [True, False])
def test_the_rule_keeps_every_safety_rule_under_random_faults(pre_vote: bool) -> None:
    """Many splits, with every fault kind and every check on (the soak covers more)."""
    for seed in range(5):
        sim = Simulation(
            5,
            seed=seed,
            pre_vote=pre_vote,
            election_timeout_max=1.1 * T,  # a narrow range: splits are common
            faults=RandomFaults(mean_interval=0.2),
        )
        sim.run_deliveries(20_000)
        assert sim.split_votes > 0
        assert len(sim.elections) > 10
