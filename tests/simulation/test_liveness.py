"""Liveness, measured in the simulator: how soon a stable leader follows the end of the faults.

The bound stated and tested here: once every node runs and every link is
healed, all nodes follow one leader within ``2 * T_max + 20 * d`` (two
election timeouts plus twenty one-way delays ``d``).  One timeout covers
followers that still refuse votes because they heard a leader (or started)
less than ``T`` ago, the other the randomized timeout of the round that
wins; the delays cover pre-vote and vote round trips, a split vote and the
heartbeat that announces the winner.
"""

from __future__ import annotations

import os

import pytest

from almost_raft.testing import RandomFaults, Simulation

from .helpers import T, wait_leader, wait_leader_among

SEEDS = int(os.environ.get("ALMOST_RAFT_SIM_LIVENESS_SEEDS", "200"))
DELAY = 0.0015  # the default link's largest one-way delay
BOUND = 2 * (2 * T) + 20 * DELAY


def _heal(sim: Simulation) -> None:
    for node_id in sim.node_ids:
        if sim.status(node_id) == "paused":
            sim.resume(node_id)
        elif sim.status(node_id) == "crashed":
            sim.restart(node_id)
    sim.heal_all()


def time_to_stable_leader_after_faults(seed: int, size: int = 5, settle: float = 2.0) -> float:
    """Run random faults for a while, heal everything, return how long until the final stable leader.

    A fault may still be playing out when everything heals (a leadership
    transfer in flight, a leader about to learn it lost its quorum), so the
    run goes on for *settle* seconds and the time counted is when the
    leader that everyone follows at the end became known to all.
    """
    sim = Simulation(size, seed=seed, faults=RandomFaults(mean_interval=0.2, max_duration=1.0))
    sim.run_for(3.0 + (seed % 7) * 0.37)
    assert sim.injector is not None
    sim.injector.stop()
    _heal(sim)
    healed = sim.now
    changes: list[tuple[float, object]] = [(healed, sim.stable_leader())]

    def watch() -> bool:
        leader = sim.stable_leader()
        if leader != changes[-1][1]:
            changes.append((sim.now, leader))
        return False

    sim.run_for(0.0)
    sim.run_until_true(watch, timeout=settle)
    became, final = changes[-1]
    assert final is not None, f"seed {seed}: no stable leader {settle}s after healing"
    assert became - healed <= settle / 2, f"seed {seed}: not settled"
    return became - healed


def test_a_stable_leader_within_the_bound_after_faults_heal() -> None:
    times = sorted(time_to_stable_leader_after_faults(seed) for seed in range(SEEDS))
    worst = times[-1]
    assert worst <= BOUND, f"worst {worst * 1e3:.1f} ms over {SEEDS} seeds, bound {BOUND * 1e3:.1f} ms"


def test_partial_partition_leader_reaches_one_follower_a_stable_leader_is_elected() -> None:
    """Pre-vote and check-quorum together: the half-connected old leader neither stays nor comes back."""
    for seed in range(20):
        sim = Simulation(5, seed=100 + seed)
        old = wait_leader(sim)
        rest = [i for i in sim.node_ids if i != old]
        sim.partial_partition(old, [rest[seed % 4]])
        cut = sim.now
        new = wait_leader_among(sim, rest, timeout=BOUND + T)
        assert sim.now - cut <= T + T / 3 + BOUND, f"seed {100 + seed}"
        elections = len(sim.elections)
        sim.run_for(5.0)
        assert sim.stable_leader(rest) == new, f"seed {100 + seed}"
        assert len(sim.elections) == elections, f"seed {100 + seed}"


@pytest.mark.parametrize("size", [3, 5])
def test_no_leader_change_when_an_isolated_node_comes_back(size: int) -> None:
    """The goal is zero: count the elections caused by a node that was cut off and returns."""
    caused = 0
    for seed in range(30):
        sim = Simulation(size, seed=200 + seed)
        leader = wait_leader(sim)
        loner = sim.node_ids[(sim.node_ids.index(leader) + 1 + seed) % size]
        if loner == leader:
            continue
        sim.isolate(loner)
        sim.run_for(2.0 + seed * 0.1)
        sim.heal_all()
        before = len(sim.elections)
        sim.run_for(3.0)
        caused += len(sim.elections) - before
    assert caused == 0
