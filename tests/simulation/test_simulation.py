"""The simulator itself: elections happen, runs replay from their seed, and a long soak breaks no rule.

The soak delivers at least one million messages (``ALMOST_RAFT_SIM_DELIVERIES``
sets how many; ``ALMOST_RAFT_SIM_SEEDS`` how many seeds share them) with every
fault kind and every safety check on.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from almost_raft import Role
from almost_raft.testing import (
    FixedDelay,
    LinkFaults,
    RandomFaults,
    SafetyViolation,
    Simulation,
    UniformDelay,
    random_simulation,
    soak,
)

DELIVERIES = int(os.environ.get("ALMOST_RAFT_SIM_DELIVERIES", "1000000"))
SEEDS = int(os.environ.get("ALMOST_RAFT_SIM_SEEDS", "40"))


@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_a_cluster_elects_one_leader_that_everyone_follows(size: int) -> None:
    sim = Simulation(size, seed=size)
    assert sim.run_until_true(lambda: sim.stable_leader() is not None, timeout=1.0)
    leader = sim.stable_leader()
    assert leader is not None
    term = sim.core(leader).term
    sim.run_for(2.0)
    # Nothing disturbs a healthy cluster: same leader, same term, and it holds its lease.
    assert sim.stable_leader() == leader
    assert sim.core(leader).term == term
    assert sim.holds_lease(leader)
    assert len(sim.elections) == 1
    assert sum(1 for i in sim.node_ids if sim.core(i).role is Role.LEADER) == 1


def test_virtual_time_only_moves_forward_and_run_until_stops_on_time() -> None:
    sim = Simulation(3, seed=4)
    seen: list[float] = []
    for _ in range(500):
        assert sim.step()
        seen.append(sim.now)
    assert seen == sorted(seen)
    sim.run_until(10.0)
    assert sim.now == 10.0
    sim.run_for(0.5)
    assert sim.now == 10.5


def test_scripted_actions_run_at_their_virtual_time() -> None:
    sim = Simulation(3, seed=5)
    times: list[float] = []
    sim.at(0.25, lambda s: times.append(s.now))
    sim.after(0.5, lambda s: times.append(s.now))
    sim.run_for(1.0)
    assert times == [0.25, 0.5]


def _run(seed: int, *, drift: float = 0.0) -> list[str]:
    sim = Simulation(
        5,
        seed=seed,
        true_drift=drift,
        link=LinkFaults(delay=UniformDelay(0.0002, 0.004), loss=0.05, duplicate=0.05, reorder=0.1),
        faults=RandomFaults(mean_interval=0.3),
        transcript_limit=None,
    )
    sim.run_deliveries(20_000)
    assert sim.stats.faults > 10
    return sim.transcript.lines()


def test_the_same_seed_gives_the_same_transcript() -> None:
    first = _run(11, drift=0.01)
    second = _run(11, drift=0.01)
    assert len(first) > 20_000
    assert first == second
    assert _run(12, drift=0.01) != first


def test_a_str_seed_replays_too() -> None:
    def once() -> list[str]:
        sim = Simulation(["x", "y", "z"], seed="replay me", faults=RandomFaults(), transcript_limit=None)
        sim.run_for(5.0)
        return sim.transcript.lines()

    assert once() == once()


def test_node_ids_may_be_ints() -> None:
    sim = Simulation([3, 1, 2], seed=1, link=LinkFaults(delay=FixedDelay(0.001)))
    assert sim.run_until_true(lambda: sim.stable_leader() is not None, timeout=1.0)
    assert sim.stable_leader() in (1, 2, 3)


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        Simulation([])
    with pytest.raises(ValueError, match="duplicate"):
        Simulation(["a", "a"])
    with pytest.raises(ValueError, match="half"):
        Simulation(3, election_timeout=0.1, heartbeat_interval=0.06)
    with pytest.raises(ValueError, match="drift"):
        Simulation(3, true_drift=0.6)
    with pytest.raises(ValueError, match="probability"):
        LinkFaults(loss=1.5)
    with pytest.raises(ValueError, match="weights"):
        RandomFaults(crash=0, pause=0, partition=0, one_way=0, partial=0, isolate=0, lossy=0, clock=0, transfer=0)


def test_soak_a_million_deliveries_with_every_fault_and_every_check() -> None:
    """The CI soak: >= 1,000,000 deliveries over many random configurations; any broken rule fails."""
    per_seed = -(-DELIVERIES // SEEDS)
    report = soak(list(range(SEEDS)), per_seed)
    assert report.deliveries >= DELIVERIES
    # Every step of every node was checked, and the runs were eventful.
    assert report.checks > report.deliveries
    assert report.faults > SEEDS * 20
    assert report.elections > SEEDS * 5


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=1_000, max_value=2**32))
def test_any_seed_keeps_the_rules(seed: int) -> None:
    sim = random_simulation(seed)
    try:
        sim.run_deliveries(3_000)
    except SafetyViolation as violation:  # pragma: no cover - shown in full on failure
        pytest.fail(str(violation))
    assert sim.stats.deliveries >= 3_000
