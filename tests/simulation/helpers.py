"""Small helpers shared by the simulation tests."""

from __future__ import annotations

from almost_raft import Role
from almost_raft._messages import NodeId
from almost_raft.testing import Simulation

T = 0.150
"""The election timeout used by the scripted scenarios (the simulator's default)."""


def wait_leader(sim: Simulation, timeout: float = 2.0) -> NodeId:
    """Run until every running node follows one leader; return it (fail if none within *timeout*)."""
    assert sim.run_until_true(lambda: sim.stable_leader() is not None, timeout), (
        f"no stable leader within {timeout}s at t={sim.now:.3f} (seed {sim.seed!r})"
    )
    leader = sim.stable_leader()
    assert leader is not None
    return leader


def wait_leader_among(sim: Simulation, among: list[NodeId], timeout: float = 2.0) -> NodeId:
    """Run until the nodes of *among* follow one leader that is one of them; return it."""
    assert sim.run_until_true(lambda: sim.stable_leader(among) is not None, timeout), (
        f"no stable leader among {among} within {timeout}s at t={sim.now:.3f} (seed {sim.seed!r})"
    )
    leader = sim.stable_leader(among)
    assert leader is not None
    return leader


def leaders_now(sim: Simulation) -> list[NodeId]:
    """The running nodes in role LEADER."""
    return [i for i in sim.node_ids if sim.status(i) == "up" and sim.core(i).role is Role.LEADER]


def wait_lease_extended(sim: Simulation, leader: NodeId, timeout: float = 1.0) -> float:
    """Run until *leader*'s lease end moves forward (a quorum acknowledged a new round); return the new end."""
    before = sim.core(leader).lease_expires_at
    assert sim.run_until_true(lambda: sim.core(leader).lease_expires_at > before, timeout)
    return sim.core(leader).lease_expires_at
