"""Tools for testing code that uses almost_raft, and almost_raft itself.

``LocalCluster`` runs real elections in one process over an in-memory network.

``Simulation`` drives the same election cores in virtual time, from one seed,
with no event loop: per-link delays, loss, duplication and reordering,
partitions (symmetric, one-way, partial), crashes, restarts with or without
storage, pauses and clock drift, scripted or random (``RandomFaults``).  A
``SafetyChecker`` checks the safety rules of docs/specification.md after every step and a
broken rule raises ``SafetyViolation`` with the seed and a transcript.
``random_simulation``/``soak`` draw whole configurations and fault
schedules from a seed.  ``explore`` visits every interleaving of a small
cluster up to a bound.
"""

from __future__ import annotations

from ._cluster import LocalCluster
from ._explore import ExplorationResult, explore, explore_many
from ._faults import FixedDelay, LinkFaults, LogNormalDelay, RandomFaults, UniformDelay
from ._safety import RULES, SafetyChecker, SafetyViolation, Transcript, Violation
from ._sim import SimNode, SimStats, Simulation
from ._soak import SoakReport, random_simulation, soak

__all__ = (
    "RULES",
    "ExplorationResult",
    "FixedDelay",
    "LinkFaults",
    "LocalCluster",
    "LogNormalDelay",
    "RandomFaults",
    "SafetyChecker",
    "SafetyViolation",
    "SimNode",
    "SimStats",
    "Simulation",
    "SoakReport",
    "Transcript",
    "UniformDelay",
    "Violation",
    "explore",
    "explore_many",
    "random_simulation",
    "soak",
)
