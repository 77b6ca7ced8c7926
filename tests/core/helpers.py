"""Shared builders for the core tests.

Every start state is reached through the public core API: an ``Election`` is
built with a seeded ``random.Random`` and driven with ``step``/``tick`` (and
the membership calls), never by setting private fields.  ``Harness`` keeps
the core, its rng and the current time together, so a test can say "one
second later, this message arrives" and check the whole ``Output``.

Times: a node is built at ``t = 0`` with ``T = 1.0``, ``T_max = 2.0``, a
heartbeat every 0.25 and a lease of 0.875, all exact in binary so deadlines
compare with ``==``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from almost_raft import HardState, Heartbeat, LeaderChanged, RequestVote, Role, VoteResponse
from almost_raft._core import Config, Election, Output
from almost_raft._messages import Message, NodeId

T: Final = 1.0
T_MAX: Final = 2.0
HB: Final = 0.25
LEASE: Final = 0.875
SEED: Final = 7
PEERS3: Final[tuple[NodeId, ...]] = ("b", "c")
PEERS5: Final[tuple[NodeId, ...]] = ("b", "c", "d", "e")


def make_config(
    self_id: NodeId = "a",
    *,
    election_timeout: float = T,
    election_timeout_max: float = T_MAX,
    heartbeat_interval: float = HB,
    min_nodes: int = 1,
    max_nodes: int = 16,
    pre_vote: bool = True,
    check_quorum: bool = True,
    lease_duration: float = LEASE,
    successor: bool = False,
    overload_backoff: bool = False,
) -> Config:
    """A core ``Config`` with the test defaults.

    The designated successor and the overload rules are off, as in any
    ``Config`` built by hand, so that each table tests its own rule; their
    own tables turn them on.
    """
    return Config(
        self_id=self_id,
        election_timeout=election_timeout,
        election_timeout_max=election_timeout_max,
        heartbeat_interval=heartbeat_interval,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        pre_vote=pre_vote,
        check_quorum=check_quorum,
        lease_duration=lease_duration,
        successor=successor,
        overload_backoff=overload_backoff,
    )


# ------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Tick:
    """Fire the timers at ``h.now + dt``, or at the core's next deadline when ``dt`` is ``None``."""

    dt: float | None = None


@dataclass(frozen=True)
class Step:
    """Deliver *message* at ``h.now + dt``."""

    message: Message
    dt: float = 0.0


@dataclass(frozen=True)
class AddPeer:
    """``Election.add_peer`` at ``h.now + dt``."""

    node_id: NodeId
    dt: float = 0.0


@dataclass(frozen=True)
class RemovePeer:
    """``Election.remove_peer`` at ``h.now + dt``."""

    node_id: NodeId
    dt: float = 0.0


@dataclass(frozen=True)
class Transfer:
    """``Election.transfer_leadership`` at ``h.now + dt``."""

    target_id: NodeId | None
    dt: float = 0.0


@dataclass(frozen=True)
class Disconnect:
    """``Election.peer_disconnected`` at ``h.now + dt`` (``PeerDisconnected`` from the transport)."""

    node_id: NodeId
    dt: float = 0.0


Input = Tick | Step | AddPeer | RemovePeer | Transfer | Disconnect


class Deadline(enum.Enum):
    """How ``Output.next_deadline`` must relate to the state before the input."""

    KEEP = "the deadline before the input"
    REDRAW = "now + a fresh draw from the injected rng"
    HEARTBEAT = "now + heartbeat_interval"
    NEVER = "inf"
    LATER = "any time after now (not pinned)"


@dataclass(frozen=True)
class Expect:
    """A full expected ``Output``: persist, sends, events and the deadline rule."""

    persist: HardState | None = None
    sends: tuple[tuple[NodeId, Message], ...] = ()
    events: tuple[LeaderChanged, ...] = ()
    deadline: Deadline | float = Deadline.KEEP


# ----------------------------------------------------------------- harness


@dataclass
class Harness:
    """One core, the rng it was given, and the current time."""

    core: Election
    rng: random.Random
    now: float
    outputs: list[Output] = field(default_factory=list)

    # -- time and inputs

    def _at(self, dt: float) -> float:
        assert dt >= 0, "time never goes backwards"
        return self.now + dt

    def advance(self, dt: float) -> None:
        """Let *dt* pass without firing a timer (the caller ensures none is due)."""
        self.now = self._at(dt)

    def set_time(self, t: float) -> None:
        """Move the clock to *t* exactly, without firing a timer (no float drift from ``now + (t - now)``)."""
        assert t >= self.now, "time never goes backwards"
        self.now = t

    def feed(self, item: Input) -> Output:
        """Apply one input and return its ``Output``."""
        match item:
            case Tick(dt=dt):
                self.now = max(self.now, self.core.next_deadline) if dt is None else self._at(dt)
                out = self.core.tick(self.now)
            case Step(message=message, dt=dt):
                self.now = self._at(dt)
                out = self.core.step(message, self.now)
            case AddPeer(node_id=node_id, dt=dt):
                self.now = self._at(dt)
                out = self.core.add_peer(node_id, self.now)
            case RemovePeer(node_id=node_id, dt=dt):
                self.now = self._at(dt)
                out = self.core.remove_peer(node_id, self.now)
            case Transfer(target_id=target_id, dt=dt):
                self.now = self._at(dt)
                out = self.core.transfer_leadership(target_id, self.now)
            case Disconnect(node_id=node_id, dt=dt):
                self.now = self._at(dt)
                out = self.core.peer_disconnected(node_id, self.now)
            case _:
                raise AssertionError(f"unknown input {item!r}")
        self.outputs.append(out)
        return out

    def wait(self, dt: float, each: Callable[[Output], None] | None = None) -> list[Output]:
        """Let *dt* pass, firing each timer at its own deadline as a driver would.

        *each* is called with every ``Output`` right after the tick that made it.
        """
        end = self._at(dt)
        outs: list[Output] = []
        while self.core.next_deadline <= end:
            before = self.core.next_deadline
            outs.append(self.tick())
            if each is not None:
                each(outs[-1])
            assert self.core.next_deadline > before, "a fired timer must move the deadline"
        self.now = end
        return outs

    def step(self, message: Message, dt: float = 0.0) -> Output:
        """Deliver *message* after *dt*."""
        return self.feed(Step(message, dt))

    def tick(self, dt: float | None = None) -> Output:
        """Fire the timers after *dt* (default: at the next deadline)."""
        return self.feed(Tick(dt))

    # -- views

    def peek_timeouts(self, n: int = 3) -> tuple[float, ...]:
        """The next *n* timeouts the core would draw from its rng (the rng is not consumed)."""
        twin = random.Random()
        twin.setstate(self.rng.getstate())
        cfg = self.core.config
        return tuple(twin.uniform(cfg.election_timeout, cfg.election_timeout_max) for _ in range(n))

    def snapshot(self) -> tuple[object, ...]:
        """Everything observable about the core (for "changes nothing" checks)."""
        c = self.core
        return (
            c.role,
            c.term,
            c.voted_for,
            c.leader_id,
            c.peer_ids,
            c.in_pre_vote,
            c.next_deadline,
            c.lease_expires_at,
            c.holds_lease(self.now),
            c.quorum,
            self.rng.getstate(),
        )

    def check(self, item: Input, expect: Expect) -> Output:
        """Apply *item* and assert that the whole ``Output`` is *expect*."""
        before_deadline = self.core.next_deadline
        draws = self.peek_timeouts()
        out = self.feed(item)
        assert out.persist == expect.persist, "persist"
        assert out.sends == expect.sends, "sends"
        assert out.events == expect.events, "events"
        match expect.deadline:
            case Deadline.KEEP:
                assert out.next_deadline == before_deadline, "deadline must not move"
            case Deadline.REDRAW:
                fresh = {self.now + d for d in draws}
                assert out.next_deadline in fresh, f"deadline {out.next_deadline} is not now + a fresh draw"
            case Deadline.HEARTBEAT:
                assert out.next_deadline == self.now + self.core.config.heartbeat_interval
            case Deadline.NEVER:
                assert out.next_deadline == float("inf")
            case Deadline.LATER:
                assert out.next_deadline > self.now
            case float(at):
                assert out.next_deadline == at
        assert out.next_deadline == self.core.next_deadline, "Output.next_deadline is the core's"
        return out


def role(h: Harness) -> Role:
    """``h.core.role``, read afresh (a call, so a type checker does not carry an earlier narrowing over)."""
    return h.core.role


# ---------------------------------------------------------------- builders


def fresh(
    self_id: NodeId = "a",
    peers: Sequence[NodeId] = PEERS3,
    *,
    seed: int = SEED,
    start: float = 0.0,
    hard_state: HardState | None = None,
    **config: Any,
) -> Harness:
    """A node just built at *start* (sticky until ``start + T``)."""
    rng = random.Random(seed)
    cfg = make_config(self_id, **config)
    core = Election(cfg, peers=peers, hard_state=hard_state, rng=rng, now=start)
    return Harness(core, rng, start)


def idle_follower(
    self_id: NodeId = "a",
    peers: Sequence[NodeId] = PEERS3,
    *,
    term: int = 0,
    voted_for: NodeId | None = None,
    **config: Any,
) -> Harness:
    """A follower of *term* that knows no leader, ``T`` after start: no longer sticky, timer not yet due."""
    h = fresh(self_id, peers, hard_state=HardState(term, voted_for), **config)
    h.advance(T)
    assert h.core.next_deadline > h.now
    return h


def follower_of(
    leader: NodeId = "b",
    term: int = 1,
    self_id: NodeId = "a",
    peers: Sequence[NodeId] = PEERS3,
    *,
    heard_at: float = 1.5,
    **config: Any,
) -> Harness:
    """A follower that accepted ``Heartbeat(term, leader, 1)`` at *heard_at* (sticky until ``heard_at + T``)."""
    h = fresh(self_id, peers, hard_state=HardState(term - 1) if term else None, **config)
    h.step(Heartbeat(term, leader, 1), heard_at)
    assert h.core.role is Role.FOLLOWER
    assert h.core.leader_id == leader
    assert h.core.term == term
    return h


def pre_candidate(self_id: NodeId = "a", peers: Sequence[NodeId] = PEERS3, *, term: int = 0, **config: Any) -> Harness:
    """A node of *term* whose election timer fired: asking for pre-votes for ``term + 1``."""
    h = fresh(self_id, peers, hard_state=HardState(term) if term else None, **config)
    h.tick()
    assert h.core.in_pre_vote
    assert h.core.term == term
    return h


def _collect(h: Harness, make: Callable[[NodeId], Message], done: Callable[[], bool]) -> None:
    for peer in h.core.peer_ids:
        if done():
            return
        h.step(make(peer))
    assert done()


def candidate(self_id: NodeId = "a", peers: Sequence[NodeId] = PEERS3, *, term: int = 1, **config: Any) -> Harness:
    """A candidate of *term* (it raised its term and voted for itself), no vote from a peer yet."""
    h = fresh(self_id, peers, hard_state=HardState(term - 1) if term > 1 else None, **config)
    h.tick()
    if h.core.in_pre_vote:
        _collect(
            h,
            lambda p: VoteResponse(term, p, True, pre_vote=True),
            lambda: not h.core.in_pre_vote,
        )
    assert h.core.role is Role.CANDIDATE
    assert h.core.term == term
    assert h.core.voted_for == self_id
    return h


def leader(self_id: NodeId = "a", peers: Sequence[NodeId] = PEERS3, *, term: int = 1, **config: Any) -> Harness:
    """A node that has just won *term* (one heartbeat round, ``seq`` 1, sent at ``h.now``)."""
    if not peers:
        h = fresh(self_id, peers, hard_state=HardState(term - 1) if term > 1 else None, **config)
        h.tick()  # a cluster of one is its own quorum
    else:
        h = candidate(self_id, peers, term=term, **config)
        _collect(h, lambda p: VoteResponse(term, p, True), lambda: h.core.role is Role.LEADER)
    assert h.core.role is Role.LEADER
    assert h.core.term == term
    assert h.core.leader_id == self_id
    return h


def requests(
    term: int, candidate_id: NodeId, peers: Sequence[NodeId], **flags: bool
) -> tuple[tuple[NodeId, Message], ...]:
    """``RequestVote(term, candidate_id, **flags)`` to each of *peers*, in order."""
    return tuple((p, RequestVote(term, candidate_id, **flags)) for p in peers)


def heartbeats(term: int, leader_id: NodeId, seq: int, peers: Sequence[NodeId]) -> tuple[tuple[NodeId, Message], ...]:
    """``Heartbeat(term, leader_id, seq)`` to each of *peers*, in order."""
    return tuple((p, Heartbeat(term, leader_id, seq)) for p in peers)


# -------------------------------------------------------------------- pump


@dataclass
class Pump:
    """Several cores on one clock, with the in-flight messages in the test's hands.

    ``inflight`` holds ``(from_id, to_id, message)``; the test chooses which to
    deliver, drop or duplicate, and when each core's timer fires.  A message
    over a link in ``cut`` (``(from_id, to_id)``) is lost when its turn comes.  ``winners``
    remembers every ``(term, id)`` that was ever leader, across restarts.
    """

    members: dict[NodeId, Harness]
    now: float = 0.0
    inflight: list[tuple[NodeId, NodeId, Message]] = field(default_factory=list)
    winners: dict[int, set[NodeId]] = field(default_factory=dict)
    persisted: dict[NodeId, HardState | None] = field(default_factory=dict)
    on_output: Callable[[NodeId, Output], None] | None = None
    on_deliver: Callable[[NodeId, NodeId, Message], None] | None = None
    cut: set[tuple[NodeId, NodeId]] = field(default_factory=set)

    @classmethod
    def build(cls, ids: Sequence[NodeId], *, seed: int = SEED, **config: Any) -> Pump:
        """One fresh core per id, all built at ``t = 0``, each with its own seeded rng."""
        members = {i: fresh(i, [p for p in ids if p != i], seed=seed * 1000 + n, **config) for n, i in enumerate(ids)}
        return cls(members, persisted=dict.fromkeys(ids))

    def _apply(self, node_id: NodeId, out: Output) -> Output:
        if out.persist is not None:
            self.persisted[node_id] = out.persist
        self.inflight.extend((node_id, to, m) for to, m in out.sends)
        core = self.members[node_id].core
        if core.role is Role.LEADER:
            self.winners.setdefault(core.term, set()).add(node_id)
        if self.on_output is not None:
            self.on_output(node_id, out)
        return out

    def _catch_up(self, node_id: NodeId) -> Harness:
        h = self.members[node_id]
        h.set_time(self.now)
        return h

    def next_timer(self) -> tuple[NodeId, float]:
        """The node whose timer is due first, and when."""
        node_id = min(self.members, key=lambda i: self.members[i].core.next_deadline)
        return node_id, self.members[node_id].core.next_deadline

    def isolate(self, node_id: NodeId) -> None:
        """Cut every link to and from *node_id*."""
        for other in self.members:
            if other != node_id:
                self.cut |= {(node_id, other), (other, node_id)}

    def advance_to(self, t: float) -> None:
        """Move the shared clock forward to *t*, firing every timer due on the way at its deadline."""
        assert t >= self.now, "time never goes backwards"
        for _ in range(100_000):
            node_id, deadline = self.next_timer()
            if deadline > t:
                self.now = t
                return
            self._tick_due(node_id, deadline)
        raise AssertionError("timers did not move forward")

    def deliver(self, index: int, *, keep: bool = False) -> Output | None:
        """Deliver ``inflight[index]`` now (``keep``: a duplicate stays in flight)."""
        sender, to, message = self.inflight[index] if keep else self.inflight.pop(index)
        if to not in self.members or (sender, to) in self.cut:
            return None
        if self.on_deliver is not None:
            self.on_deliver(sender, to, message)
        return self._apply(to, self._catch_up(to).step(message))

    def _tick_due(self, node_id: NodeId, deadline: float) -> Output:
        self.now = max(self.now, deadline)
        return self._apply(node_id, self._catch_up(node_id).tick(0.0))

    def fire(self, node_id: NodeId) -> None:
        """Let time run to *node_id*'s next deadline, firing it and every timer due before it."""
        deadline = self.members[node_id].core.next_deadline
        if deadline != float("inf"):
            self.advance_to(max(self.now, deadline))

    def call(self, node_id: NodeId, fn: Callable[[Election, float], Output]) -> Output:
        """Run a membership or transfer call on *node_id* now."""
        h = self._catch_up(node_id)
        return self._apply(node_id, fn(h.core, self.now))

    def restart(self, node_id: NodeId, *, seed: int) -> None:
        """Crash *node_id* and start it again now from the last state it asked to persist."""
        old = self.members[node_id].core
        self.members[node_id] = fresh(
            node_id,
            old.peer_ids,
            seed=seed,
            start=self.now,
            hard_state=self.persisted[node_id],
            **{f: getattr(old.config, f) for f in _CONFIG_FIELDS if f != "self_id"},
        )
        self.inflight = [(s, to, m) for s, to, m in self.inflight if to != node_id]

    def run(self, until: float, *, max_steps: int = 100_000) -> None:
        """Deliver every message at once in FIFO order; fire the earliest timer while none is in flight.

        A timer already due (two nodes due at the same instant: the first one
        fired and sent) fires before the next delivery, as it would in a driver.
        """
        for _ in range(max_steps):
            node_id, deadline = self.next_timer()
            if deadline <= self.now:
                self._tick_due(node_id, deadline)
                continue
            if self.inflight:
                self.deliver(0)
                continue
            if deadline > until:
                self.now = max(self.now, until)
                return
            self._tick_due(node_id, deadline)
        raise AssertionError("the pump did not settle")

    def leaders(self) -> dict[NodeId, int]:
        """The nodes that believe they lead now, with their terms."""
        return {i: h.core.term for i, h in self.members.items() if h.core.role is Role.LEADER}


_CONFIG_FIELDS: Final = (
    "self_id",
    "election_timeout",
    "election_timeout_max",
    "heartbeat_interval",
    "min_nodes",
    "max_nodes",
    "pre_vote",
    "check_quorum",
    "lease_duration",
    "successor",
    "overload_backoff",
)
