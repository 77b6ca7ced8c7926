"""Random configurations for long simulated runs: many seeds, every fault kind, every check on."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import final

from ._faults import DelayModel, FixedDelay, LinkFaults, LogNormalDelay, RandomFaults, UniformDelay
from ._sim import Simulation


def random_simulation(seed: int | str, *, check_safety: bool = True) -> Simulation:
    """A simulation whose whole configuration is drawn from *seed*.

    The draw covers 3- and 5-node clusters; pre-vote, check-quorum, the
    split-vote rule, the designated successor and the overload rules on or
    off; connection-closed notices on crashes and spurious ones, or none;
    several timeout ranges and heartbeat
    intervals; fixed, uniform and long-tailed delays with some loss,
    duplication and reordering; clocks drifting up to the configured bound;
    and a ``RandomFaults`` schedule of every kind except restarts without
    storage (which break the vote rule by design).
    """
    rng = random.Random(f"{seed}/config")
    timeout = rng.choice((0.012, 0.050, 0.150))
    delay: DelayModel = rng.choice(
        (
            FixedDelay(timeout / 150),
            UniformDelay(timeout / 300, timeout / 50),
            LogNormalDelay(median=timeout / 150, sigma=1.0, floor=timeout / 1000, cap=timeout),
        )
    )
    link = LinkFaults(
        delay=delay,
        loss=rng.choice((0.0, 0.0, 0.01, 0.05)),
        duplicate=rng.choice((0.0, 0.0, 0.01, 0.05)),
        reorder=rng.choice((0.0, 0.0, 0.05)),
        reorder_delay=timeout / 5,
    )
    drift = rng.choice((0.0, 0.01, 0.05))
    # Drawn from a stream of their own, so the draws above stay as they were.
    extra = random.Random(f"{seed}/config/successor")
    successor = extra.random() < 0.75
    disconnect_notice = extra.random() < 0.5
    faults = RandomFaults(
        mean_interval=timeout * rng.choice((2, 5, 10)),
        min_duration=timeout / 3,
        max_duration=timeout * rng.choice((3, 10)),
        disconnect=extra.choice((0.0, 0.5, 1.0)),
        lossy_link=LinkFaults(
            delay=LogNormalDelay(median=timeout / 50, sigma=1.0, floor=timeout / 1000, cap=timeout * 2),
            loss=0.3,
            duplicate=0.2,
            reorder=0.3,
            reorder_delay=timeout,
        ),
    )
    return Simulation(
        rng.choice((3, 5)),
        seed=seed,
        election_timeout=timeout,
        election_timeout_max=timeout * rng.choice((1.0, 1.5, 2.0, 2.0)),
        heartbeat_interval=timeout / rng.choice((2, 3, 5)),
        pre_vote=rng.random() < 0.75,
        check_quorum=rng.random() < 0.75,
        split_vote_retry=rng.random() < 0.75,
        successor=successor,
        overload_backoff=extra.random() < 0.75,
        disconnect_notice=disconnect_notice,
        clock_drift=drift,
        true_drift=drift * rng.choice((0.0, 0.5, 1.0, 1.0)),
        link=link,
        faults=faults,
        check_safety=check_safety,
    )


@final
@dataclass(slots=True)
class SoakReport:
    """What ``soak`` did.

    Attributes:
        seeds: the seeds run.
        deliveries: messages delivered, over all seeds.
        ticks: timer firings, over all seeds.
        checks: safety checks made (one per step of a node).
        faults: faults injected and repaired.
        elections: elections won.
        split_votes: terms with two or more candidates and no winner.
        virtual_seconds: simulated time, over all seeds.
        elapsed: wall-clock seconds.
    """

    seeds: list[int | str] = field(default_factory=list)
    deliveries: int = 0
    ticks: int = 0
    checks: int = 0
    faults: int = 0
    elections: int = 0
    split_votes: int = 0
    virtual_seconds: float = 0.0
    elapsed: float = 0.0


def soak(seeds: list[int | str], deliveries_per_seed: int) -> SoakReport:
    """Run ``random_simulation(seed)`` for each seed until it delivered *deliveries_per_seed* messages.

    Raises:
        SafetyViolation: the first broken rule, with its seed and transcript.
    """
    report = SoakReport()
    started = time.perf_counter()
    for seed in seeds:
        sim = random_simulation(seed)
        sim.run_deliveries(deliveries_per_seed)
        report.seeds.append(seed)
        report.deliveries += sim.stats.deliveries
        report.ticks += sim.stats.ticks
        report.checks += sim.checker.checks if sim.checker is not None else 0
        report.faults += sim.stats.faults
        report.elections += len(sim.elections)
        report.split_votes += sim.split_votes
        report.virtual_seconds += sim.now
    report.elapsed = time.perf_counter() - started
    return report
