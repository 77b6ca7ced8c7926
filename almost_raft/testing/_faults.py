"""Fault models for the simulator: delay distributions, link faults, random fault schedules.

Everything here is a frozen description; the ``Simulation`` draws from its own
seeded ``random.Random`` to apply it, so a seed replays the same faults.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, final

from .._messages import NodeId

if TYPE_CHECKING:
    from ._sim import Simulation


class DelayModel(Protocol):
    """A distribution of one-way message delays, in seconds."""

    @property
    def minimum(self) -> float:
        """The smallest delay the model can draw (used for lower bounds)."""
        ...

    def sample(self, rng: random.Random) -> float:
        """Draw one delay."""
        ...


def _check_delay(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


@final
@dataclass(frozen=True, slots=True)
class FixedDelay:
    """Every message takes exactly ``delay`` seconds."""

    delay: float = 0.001

    def __post_init__(self) -> None:
        _check_delay("FixedDelay.delay", self.delay)

    @property
    def minimum(self) -> float:
        """The delay itself."""
        return self.delay

    def sample(self, rng: random.Random) -> float:
        """Return ``delay`` (draws nothing)."""
        return self.delay


@final
@dataclass(frozen=True, slots=True)
class UniformDelay:
    """Delays drawn uniformly from ``[low, high]``."""

    low: float = 0.0005
    high: float = 0.0015

    def __post_init__(self) -> None:
        _check_delay("UniformDelay.low", self.low)
        _check_delay("UniformDelay.high", self.high)
        if self.high < self.low:
            raise ValueError(f"UniformDelay.high ({self.high}) must be >= low ({self.low})")

    @property
    def minimum(self) -> float:
        """``low``."""
        return self.low

    def sample(self, rng: random.Random) -> float:
        """Draw from ``[low, high]``."""
        return rng.uniform(self.low, self.high)


@final
@dataclass(frozen=True, slots=True)
class LogNormalDelay:
    """A long-tailed delay: ``floor`` plus a log-normal part, capped at ``cap``.

    The median is ``floor + median``; ``sigma`` sets how heavy the tail is.
    """

    median: float = 0.001
    sigma: float = 1.0
    floor: float = 0.0
    cap: float = 1.0

    def __post_init__(self) -> None:
        _check_delay("LogNormalDelay.median", self.median)
        _check_delay("LogNormalDelay.floor", self.floor)
        _check_delay("LogNormalDelay.cap", self.cap)
        if self.median <= 0 or self.sigma < 0:
            raise ValueError("LogNormalDelay needs median > 0 and sigma >= 0")

    @property
    def minimum(self) -> float:
        """``floor``."""
        return self.floor

    def sample(self, rng: random.Random) -> float:
        """Draw one delay."""
        return min(self.cap, self.floor + rng.lognormvariate(math.log(self.median), self.sigma))


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


@final
@dataclass(frozen=True, slots=True)
class LinkFaults:
    """How one directed link behaves.

    Attributes:
        delay: the one-way delay distribution.
        loss: probability that a message is lost.
        duplicate: probability that a message is delivered twice (the copy
            takes its own delay, so it may arrive first).
        reorder: probability that a message is held back by an extra delay
            drawn from ``[0, reorder_delay]``, so later messages overtake it.
        reorder_delay: the largest extra delay of a held-back message.
    """

    delay: DelayModel = field(default_factory=UniformDelay)
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.010

    def __post_init__(self) -> None:
        _check_probability("LinkFaults.loss", self.loss)
        _check_probability("LinkFaults.duplicate", self.duplicate)
        _check_probability("LinkFaults.reorder", self.reorder)
        _check_delay("LinkFaults.reorder_delay", self.reorder_delay)


@final
@dataclass(frozen=True, slots=True)
class RandomFaults:
    """A random fault schedule: the simulator injects one fault at a time, at random.

    Faults start after an exponentially distributed gap (mean
    ``mean_interval``) and each lasts a duration drawn from
    ``[min_duration, max_duration]``.  The weights choose the kind:

    * ``crash``: crash a node, restart it from its storage when the fault ends;
    * ``pause``: freeze a node (a long GC pause, a stopped VM), wake it later;
    * ``partition``: split the nodes into two random sides;
    * ``one_way``: cut a random set of links in one direction only;
    * ``partial``: the leader (or a random node) reaches only some peers;
    * ``isolate``: cut one node off from every other;
    * ``lossy``: make random links lose, duplicate and reorder messages
      (``lossy_link`` says how badly);
    * ``clock``: redraw one node's clock rate within the simulation's
      ``true_drift`` (takes effect at once, never ends);
    * ``transfer``: ask the leader to hand over (a control action);
    * ``disconnect``: tell a random node that a random peer's connection
      closed (``PeerDisconnected``) while that peer still runs: a spurious
      notice, as a reset connection of a live process gives (off by default);
    * ``wipe``: crash a node and restart it *without* its storage.  This
      breaks the one-vote-per-term rule by design, so it is off by default.

    At most ``max_down`` nodes are crashed or paused at once (``None``: a
    minority), and at most one network fault (partition, one-way, partial,
    isolate, lossy) is active at a time; when it ends every link is healed.

    Attributes are the knobs above.
    """

    mean_interval: float = 0.5
    min_duration: float = 0.05
    max_duration: float = 1.5
    crash: float = 1.0
    pause: float = 1.0
    partition: float = 1.0
    one_way: float = 1.0
    partial: float = 1.0
    isolate: float = 1.0
    lossy: float = 1.0
    clock: float = 0.5
    transfer: float = 0.5
    disconnect: float = 0.0
    wipe: float = 0.0
    max_down: int | None = None
    lossy_link: LinkFaults = field(
        default_factory=lambda: LinkFaults(
            delay=LogNormalDelay(median=0.002, sigma=1.0, floor=0.0002, cap=0.5),
            loss=0.3,
            duplicate=0.2,
            reorder=0.3,
            reorder_delay=0.05,
        )
    )

    def __post_init__(self) -> None:
        if not (self.mean_interval > 0 and 0 < self.min_duration <= self.max_duration):
            raise ValueError("RandomFaults needs mean_interval > 0 and 0 < min_duration <= max_duration")
        if min(self.weights().values()) < 0 or sum(self.weights().values()) <= 0:
            raise ValueError("RandomFaults weights must be >= 0 with a positive sum")

    def weights(self) -> dict[str, float]:
        """The weight of each fault kind, in a fixed order."""
        return {
            "crash": self.crash,
            "pause": self.pause,
            "partition": self.partition,
            "one_way": self.one_way,
            "partial": self.partial,
            "isolate": self.isolate,
            "lossy": self.lossy,
            "clock": self.clock,
            "transfer": self.transfer,
            "disconnect": self.disconnect,
            "wipe": self.wipe,
        }


_NETWORK_KINDS = ("partition", "one_way", "partial", "isolate", "lossy")


@final
class FaultInjector:
    """Carries out a ``RandomFaults`` schedule on one simulation (created by ``Simulation``)."""

    def __init__(self, sim: Simulation, spec: RandomFaults, rng: random.Random) -> None:
        self._sim = sim
        self._spec = spec
        self._rng = rng
        self._kinds = [(k, w) for k, w in spec.weights().items() if w > 0]
        self._down: dict[NodeId, None] = {}
        self._network_busy = False
        n = len(sim.node_ids)
        self._max_down = (n - 1) // 2 if spec.max_down is None else spec.max_down
        self.injected: dict[str, int] = dict.fromkeys(spec.weights(), 0)
        self.stopped = False

    def start(self) -> None:
        """Schedule the first fault."""
        self._schedule_next()

    def stop(self) -> None:
        """Inject no more faults, and leave the ones in force to the caller (nothing is undone later)."""
        self.stopped = True

    def _schedule_next(self) -> None:
        gap = self._rng.expovariate(1.0 / self._spec.mean_interval)
        self._sim.after(gap, self._inject, "random fault")

    def _duration(self) -> float:
        return self._rng.uniform(self._spec.min_duration, self._spec.max_duration)

    def _inject(self, sim: Simulation) -> None:
        if self.stopped:
            return
        self._schedule_next()
        total = sum(w for _, w in self._kinds)
        pick = self._rng.uniform(0, total)
        kind = self._kinds[-1][0]
        for k, w in self._kinds:
            if pick < w:
                kind = k
                break
            pick -= w
        if kind in _NETWORK_KINDS and self._network_busy:
            return
        ids = list(sim.node_ids)
        if kind in ("crash", "pause", "wipe"):
            candidates = [i for i in ids if i not in self._down and sim.status(i) == "up"]
            if len(self._down) >= self._max_down or not candidates:
                return
            victim = self._pick_victim(candidates)
            self._down[victim] = None
            if kind == "pause":
                sim.pause(victim)
                sim.after(self._duration(), functools.partial(self._wake, victim=victim), f"resume {victim!r}")
            else:
                sim.crash(victim)
                storage = kind == "crash"
                sim.after(
                    self._duration(),
                    functools.partial(self._restart, victim=victim, storage=storage),
                    f"restart {victim!r}{'' if storage else ' without storage'}",
                )
        elif kind == "clock":
            victim = self._rng.choice(ids)
            d = sim.true_drift
            sim.set_clock_rate(victim, self._rng.uniform(1.0 - d, 1.0 + d))
        elif kind == "transfer":
            leader = sim.leader()
            if leader is None:
                return
            target = self._rng.choice([None, *[i for i in ids if i != leader]])
            sim.transfer_leadership(leader, target)
        elif kind == "disconnect":
            # Most often the interesting one: a follower told that its leader went.
            leader = sim.leader()
            if leader is not None and self._rng.random() < 0.5:
                peer = leader
                node = self._rng.choice([i for i in ids if i != leader])
            else:
                node, peer = self._rng.sample(ids, 2)
            sim.peer_disconnected(node, peer)
        else:
            self._network_busy = True
            self._network_fault(sim, kind, ids)
            sim.after(self._duration(), self._heal, "heal the network")
        self.injected[kind] += 1

    def _pick_victim(self, candidates: list[NodeId]) -> NodeId:
        # Prefer the leader half of the time: faults at the leader are the interesting ones.
        leader = self._sim.leader()
        if leader in candidates and self._rng.random() < 0.5:
            return leader
        return self._rng.choice(candidates)

    def _wake(self, sim: Simulation, victim: NodeId) -> None:
        if not self.stopped:
            sim.resume(victim)
            self._down.pop(victim, None)

    def _restart(self, sim: Simulation, victim: NodeId, storage: bool) -> None:
        if not self.stopped:
            sim.restart(victim, storage=storage)
            self._down.pop(victim, None)

    def _heal(self, sim: Simulation) -> None:
        if not self.stopped:
            sim.heal_all()
            self._network_busy = False

    def _network_fault(self, sim: Simulation, kind: str, ids: list[NodeId]) -> None:
        rng = self._rng
        if kind == "partition":
            shuffled = ids[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) - 1)
            sim.partition(shuffled[:cut], shuffled[cut:])
        elif kind == "one_way":
            pairs = [(a, b) for a in ids for b in ids if a != b]
            for a, b in rng.sample(pairs, rng.randint(1, len(pairs) // 2)):
                sim.cut(a, b, both_ways=False)
        elif kind == "partial":
            leader = sim.leader()
            center = leader if leader is not None else rng.choice(ids)
            others = [i for i in ids if i != center]
            reach = rng.sample(others, rng.randint(1, max(1, len(others) - 1)))
            sim.partial_partition(center, reach)
        elif kind == "isolate":
            sim.isolate(rng.choice(ids))
        else:  # lossy
            pairs = [(a, b) for a in ids for b in ids if a != b]
            for a, b in rng.sample(pairs, rng.randint(1, len(pairs))):
                sim.set_link(a, b, self._spec.lossy_link, both_ways=False)
