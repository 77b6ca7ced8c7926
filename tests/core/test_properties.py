"""Property tests of the safety rules of docs/specification.md on the pure core, with hypothesis.

Three levels, each checking every rule after every single call:

* every (role, message kind) pair, with random senders, terms and flags;
* random sequences of messages, timers, membership calls, transfers and
  restarts (from the last persisted ``HardState``) on one core;
* a cluster of three or five cores pumped by hand, with random delivery
  order, loss, duplication, delay, partitions, restarts and transfers.

The rules (docs/specification.md: "Safety properties", "Voting and
stickiness", "Winning and views", "Lease"): a term never decreases; a vote never changes within a term, across
restarts too; every change of ``(term, voted_for)`` is in that call's
``Output.persist``; a node never knows two leaders in one term (with forged
input: within one incarnation, as the leader of a term is not persisted); at
most one leader per term across nodes, each win resting on grants of a
quorum of distinct voters; ``LeaderChanged(t, x)`` names ``x`` only if ``x``
won ``t``; at most one lease at any instant; a message from an unknown sender
changes nothing; a pre-vote request changes nothing on its receiver.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from almost_raft import (
    HardState,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    Role,
    TimeoutNow,
    VoteResponse,
)
from almost_raft._core import Election, Output
from almost_raft._messages import Message, NodeId

from .helpers import (
    AddPeer,
    Disconnect,
    Harness,
    Input,
    Pump,
    RemovePeer,
    Step,
    Transfer,
    candidate,
    follower_of,
    fresh,
    idle_follower,
    leader,
    pre_candidate,
)

FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SELF: NodeId = "a"
KNOWN: tuple[NodeId, ...] = ("b", "c")
SENDERS: tuple[NodeId, ...] = (*KNOWN, SELF, "zz")  # "zz" is never a peer
KINDS = ("RequestVote", "VoteResponse", "Heartbeat", "HeartbeatResponse", "TimeoutNow")


@st.composite
def messages(
    draw: st.DrawFn, kind: str | None = None, senders: tuple[NodeId, ...] = SENDERS, max_term: int = 6
) -> Message:
    """Any valid message, from any of *senders*, with a small random term and random flags."""
    kind = kind or draw(st.sampled_from(KINDS))
    sender = draw(st.sampled_from(senders))
    term = draw(st.integers(0, max_term))
    flag = st.booleans()
    seq = st.integers(0, 4)
    match kind:
        case "RequestVote":
            pre_vote = draw(flag)
            return RequestVote(max(term, 1) if pre_vote else term, sender, pre_vote, draw(flag))
        case "VoteResponse":
            return VoteResponse(term, sender, draw(flag), draw(flag))
        case "Heartbeat":
            named = draw(st.sampled_from((None, *senders)).filter(lambda n: n != sender))
            return Heartbeat(term, sender, draw(seq), named)
        case "HeartbeatResponse":
            return HeartbeatResponse(term, sender, draw(flag), draw(seq))
        case _:
            return TimeoutNow(term, sender)


# ------------------------------------------------------------------- watch


@dataclass
class Watch:
    """What one node has done so far, to check each new ``Output`` against."""

    self_id: NodeId
    hard: tuple[int, NodeId | None]
    persisted: HardState
    view: tuple[int, NodeId | None]
    max_term: int = 0
    votes: dict[int, NodeId] = field(default_factory=dict)
    leaders: dict[int, NodeId] = field(default_factory=dict)
    won: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, h: Harness, persisted: HardState | None = None) -> Watch:
        """Start watching *h* as it is now."""
        core = h.core
        events = [e for out in h.outputs for e in out.events]
        view = (events[-1].term, events[-1].leader_id) if events else (core.term, None)
        w = cls(
            self_id=core.self_id,
            hard=(core.term, core.voted_for),
            persisted=persisted or HardState(core.term, core.voted_for),
            view=view,
            max_term=core.term,
        )
        w._record(core)
        return w

    def _record(self, core: Election) -> None:
        if core.voted_for is not None:
            first = self.votes.setdefault(core.term, core.voted_for)
            assert first == core.voted_for, f"voted for {first!r} and {core.voted_for!r} in term {core.term}"
        if core.role is Role.LEADER:
            assert core.leader_id == self.self_id
            self.won.add(core.term)
        if core.leader_id is not None:
            known = self.leaders.setdefault(core.term, core.leader_id)
            assert known == core.leader_id, f"two leaders in term {core.term}: {known!r}, {core.leader_id!r}"

    def output(self, core: Election, out: Output, now: float) -> None:
        """Check one ``Output`` and the state the core is in after it."""
        assert core.term >= self.max_term, "a term never decreases"
        self.max_term = core.term
        hard = (core.term, core.voted_for)
        if hard != self.hard:
            assert out.persist == HardState(*hard), "a change of term or vote is persisted in the same Output"
        if out.persist is not None:
            assert out.persist == HardState(*hard)
            self.persisted = out.persist
        self.hard = hard
        self._record(core)
        for ev in out.events:
            assert (ev.term, ev.leader_id) != self.view, "an event is a change"
            assert ev.term >= self.view[0]
            if ev.leader_id is None:
                assert self.view[1] is not None, "never (t, None) -> (t', None)"
            else:
                known = self.leaders.setdefault(ev.term, ev.leader_id)
                assert known == ev.leader_id
                if ev.leader_id == self.self_id:
                    assert ev.term in self.won, "a node reports itself leader only of a term it won"
            self.view = (ev.term, ev.leader_id)
        # The user's view is truthful: the known leader, or no leader.
        if core.leader_id is not None:
            assert self.view == (core.term, core.leader_id)
        else:
            assert self.view[1] is None
        if core.role is not Role.LEADER:
            assert not core.holds_lease(now)
        assert out.next_deadline == core.next_deadline
        assert out.next_deadline > now or core.role is Role.TERMINATED

    def restarted(self, core: Election, *, forget_leaders: bool = False) -> None:
        """The node was restarted from ``self.persisted``.

        ``forget_leaders``: the leader of a term is not persisted, so under
        forged input a restarted node cannot tell a second claimant from the
        first; with honest peers (the pump) the memory is kept across restarts.
        """
        assert (core.term, core.voted_for) == (self.persisted.term, self.persisted.voted_for)
        assert core.term >= self.max_term, "a restart never goes back in term"
        self.hard = (core.term, core.voted_for)
        self.view = (core.term, None)
        if forget_leaders:
            self.leaders.clear()
        self._record(core)


def _wait(h: Harness, w: Watch, dt: float) -> None:
    h.wait(dt, lambda out: w.output(h.core, out, h.now))


def _call(h: Harness, w: Watch, item: Input) -> None:
    w.output(h.core, h.feed(item), h.now)


def _unknown(h: Harness, m: Message) -> bool:
    return m.sender == h.core.self_id or m.sender not in h.core.peer_ids


def _step_checked(h: Harness, w: Watch, m: Message) -> None:
    before = h.snapshot()
    rejected = h.core.counters.messages_rejected
    out = h.step(m)
    w.output(h.core, out, h.now)
    if _unknown(h, m):
        assert out == Output(None, (), (), before[6]), "a message from an unknown sender changes nothing"  # type: ignore[arg-type]
        assert h.snapshot() == before
        assert h.core.counters.messages_rejected == rejected + 1 or h.core.role is Role.TERMINATED
    elif isinstance(m, RequestVote) and m.pre_vote:
        assert out.persist is None
        assert out.events == ()
        assert h.snapshot()[:4] == before[:4], "a pre-vote request never changes role, term, vote or leader"


# ---------------------------------------------------- every (role, kind) pair

STARTS: dict[str, Callable[[], Harness]] = {
    "new": lambda: fresh(),
    "follower": lambda: follower_of("b", 2),
    "idle-follower-voted": lambda: idle_follower(term=2, voted_for="c"),
    "pre-candidate": lambda: pre_candidate(term=2),
    "candidate": lambda: candidate(term=2),
    "leader": lambda: leader(term=2),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("role", list(STARTS))
@FEW
@given(data=st.data())
def test_every_role_and_message_kind(role: str, kind: str, data: st.DataObject) -> None:
    """The specification's safety rules hold for any message of any kind, in any role, from any sender."""
    h = STARTS[role]()
    w = Watch.of(h)
    for _ in range(3):
        _wait(h, w, data.draw(st.floats(0, 0.6), label="dt"))
        _step_checked(h, w, data.draw(messages(kind), label="message"))


# ------------------------------------------------------ one core, sequences


@dataclass(frozen=True)
class Wait:
    """Let time pass (timers fire on the way)."""

    dt: float


@dataclass(frozen=True)
class Restart:
    """Crash and restart from the last persisted ``HardState``, with a new rng."""

    seed: int


Action = Step | Wait | AddPeer | RemovePeer | Transfer | Disconnect | Restart

_STEPS = st.builds(Step, messages(), st.floats(0, 0.4))
ACTIONS: st.SearchStrategy[Action] = st.one_of(
    _STEPS,
    _STEPS,
    _STEPS,
    st.builds(Wait, st.floats(0, 2.5)),
    st.builds(AddPeer, st.sampled_from(("b", "c", "d", "e", "a"))),
    st.builds(RemovePeer, st.sampled_from(("b", "c", "d", "e", "zz"))),
    st.builds(Transfer, st.sampled_from(("b", "c", "a", "zz", None))),
    st.builds(Disconnect, st.sampled_from(("b", "c", "a", "zz"))),
    st.builds(Restart, st.integers(0, 2**16)),
)


@SOME
@given(
    start=st.sampled_from(list(STARTS)),
    pre_vote=st.booleans(),
    fast=st.booleans(),
    actions=st.lists(ACTIONS, min_size=10, max_size=60),
)
def test_random_sequences_on_one_core(start: str, pre_vote: bool, fast: bool, actions: list[Action]) -> None:
    """The specification's safety rules hold after every call of any sequence, across restarts from the persisted state.

    ``fast`` turns on the designated successor and the overload rules.
    """
    if fast:
        h = fresh(pre_vote=pre_vote, successor=True, overload_backoff=True)
    else:
        h = STARTS[start]() if pre_vote else fresh(pre_vote=False)
    w = Watch.of(h)
    for action in actions:
        match action:
            case Step(message=m, dt=dt):
                _wait(h, w, dt)
                _step_checked(h, w, m)
            case Wait(dt=dt):
                _wait(h, w, dt)
            case AddPeer() | RemovePeer() | Transfer() | Disconnect():
                _call(h, w, action)
            case Restart(seed=seed):
                if h.core.role is Role.TERMINATED:
                    continue
                rng = random.Random(seed)
                core = Election(h.core.config, peers=h.core.peer_ids, hard_state=w.persisted, rng=rng, now=h.now)
                h = Harness(core, rng, h.now)
                w.restarted(core, forget_leaders=True)


# ---------------------------------------------------- a small cluster, pumped

IDS: tuple[NodeId, ...] = ("n1", "n2", "n3", "n4", "n5")


@dataclass(frozen=True)
class Deliver:
    """Deliver one in-flight message now (``keep``: a copy stays in flight), or lose it (``lose``)."""

    index: int
    keep: bool = False
    lose: bool = False


@dataclass(frozen=True)
class NextTimer:
    """Let time run to the next deadline of any node."""


@dataclass(frozen=True)
class RestartNode:
    """Crash a node and restart it from what it persisted; messages in flight to it are lost."""

    node_id: NodeId


@dataclass(frozen=True)
class HandOver:
    """``TransferLeadership(None)`` on a node that leads, if any (on *node_id* otherwise: a no-op)."""

    node_id: NodeId


@dataclass(frozen=True)
class IsolateLeader:
    """Cut every link of a node that leads, if any: the classic partition."""


@dataclass(frozen=True)
class DuplicateAll:
    """The network duplicates every message in flight."""


@dataclass(frozen=True)
class Isolate:
    """Cut every link of a node until ``HealAll``: what it sends or is sent is lost."""

    node_id: NodeId


@dataclass(frozen=True)
class Cut:
    """Cut the link between two nodes, both ways, until ``HealAll``."""

    a: NodeId
    b: NodeId


@dataclass(frozen=True)
class LeaderGone:
    """Every node that follows a leader is told its connection closed (``PeerDisconnected``), true or not."""


@dataclass(frozen=True)
class HealAll:
    """Undo every ``Isolate`` and ``Cut``."""


@dataclass(frozen=True)
class Run:
    """Run the cluster for a while: every message that is not cut off arrives at once, timers fire."""

    dt: float


PumpAction = (
    Deliver
    | NextTimer
    | Wait
    | RestartNode
    | HandOver
    | IsolateLeader
    | DuplicateAll
    | Isolate
    | Cut
    | HealAll
    | Run
    | LeaderGone
)

_DELIVER = st.builds(Deliver, st.integers(0, 63))
PUMP_ACTIONS: st.SearchStrategy[PumpAction] = st.one_of(
    _DELIVER,
    _DELIVER,
    st.builds(Deliver, st.integers(0, 63), keep=st.just(True)),
    st.builds(Deliver, st.integers(0, 63), lose=st.just(True)),
    st.just(NextTimer()),
    st.builds(Wait, st.floats(0, 1.2)),
    st.builds(Run, st.floats(0, 3.0)),
    st.builds(Run, st.floats(0, 3.0)),
    st.builds(RestartNode, st.sampled_from(IDS)),
    st.builds(HandOver, st.sampled_from(IDS)),
    st.just(IsolateLeader()),
    st.just(DuplicateAll()),
    st.builds(Isolate, st.sampled_from(IDS)),
    st.builds(Cut, st.sampled_from(IDS), st.sampled_from(IDS)),
    st.just(HealAll()),
    st.just(LeaderGone()),
)


def _disconnected(gone: NodeId, core: Election, now: float) -> Output:
    return core.peer_disconnected(gone, now)


def _check_cluster(pump: Pump, watches: dict[NodeId, Watch]) -> None:
    for term, ids in pump.winners.items():
        assert len(ids) <= 1, f"two leaders in term {term}: {sorted(map(str, ids))}"
    holders = [i for i, h in pump.members.items() if h.core.holds_lease(pump.now)]
    assert len(holders) <= 1, f"two leases at {pump.now}: {holders}"
    for i, w in watches.items():
        for term, x in w.leaders.items():
            assert x in pump.winners.get(term, set()), f"{i!r} believes {x!r} won term {term}, it did not"


@SOME
@given(
    size=st.sampled_from([3, 5]),
    pre_vote=st.booleans(),
    check_quorum=st.booleans(),
    fast=st.booleans(),
    seed=st.integers(0, 2**16),
    actions=st.lists(PUMP_ACTIONS, min_size=30, max_size=150),
)
def test_random_cluster_runs(
    size: int, pre_vote: bool, check_quorum: bool, fast: bool, seed: int, actions: list[PumpAction]
) -> None:
    """The specification's safety rules hold in a cluster under loss, duplication, reordering, delay, partitions and restarts.

    Checked after every output of every node, not only between actions.

    Besides the per-node rules: at most one leader per term, at most one lease
    at any instant, every leader known to others really won, and every win
    rests on grants from a quorum of distinct voters (paper 5.2).  ``fast``
    turns on the designated successor and the overload rules.
    """
    ids = IDS[:size]
    pump = Pump.build(
        ids, seed=seed, pre_vote=pre_vote, check_quorum=check_quorum, successor=fast, overload_backoff=fast
    )
    watches = {i: Watch.of(h) for i, h in pump.members.items()}
    grants: dict[tuple[NodeId, int], set[NodeId]] = {}

    def on_deliver(sender: NodeId, to: NodeId, m: Message) -> None:
        if isinstance(m, VoteResponse) and m.granted and not m.pre_vote:
            grants.setdefault((to, m.term), set()).add(m.voter_id)

    def on_output(node_id: NodeId, out: Output) -> None:
        core = pump.members[node_id].core
        if core.role is Role.LEADER and core.term not in watches[node_id].won:
            voters = grants.get((node_id, core.term), set()) | {node_id}
            assert len(voters) >= core.quorum, f"{node_id!r} won term {core.term} with votes of {voters}"
        watches[node_id].output(core, out, pump.now)
        _check_cluster(pump, watches)

    pump.on_deliver = on_deliver
    pump.on_output = on_output
    restarts = 0
    for action in actions:
        match action:
            case Deliver(index=index, keep=keep, lose=lose) if pump.inflight:
                index %= len(pump.inflight)
                if lose:
                    pump.inflight.pop(index)
                else:
                    pump.deliver(index, keep=keep)
            case Deliver() | NextTimer():
                pump.advance_to(max(pump.now, pump.next_timer()[1]))
            case Wait(dt=dt):
                pump.advance_to(pump.now + dt)
            case RestartNode(node_id=node_id) if node_id in pump.members:
                restarts += 1
                pump.restart(node_id, seed=seed + restarts)
                watches[node_id].restarted(pump.members[node_id].core)
            case HandOver(node_id=node_id) if node_id in pump.members:
                node_id = next(iter(pump.leaders()), node_id)
                pump.call(node_id, lambda core, now: core.transfer_leadership(None, now))
            case IsolateLeader():
                for node_id in pump.leaders():
                    pump.isolate(node_id)
            case DuplicateAll() if len(pump.inflight) <= 64:
                pump.inflight += pump.inflight
            case Isolate(node_id=node_id):
                pump.isolate(node_id)
            case Cut(a=a, b=b) if a != b:
                pump.cut |= {(a, b), (b, a)}
            case HealAll():
                pump.cut.clear()
            case LeaderGone():
                for node_id, h in pump.members.items():
                    gone = h.core.leader_id
                    if gone is not None and gone != node_id:
                        pump.call(node_id, functools.partial(_disconnected, gone))
            case Run(dt=dt):
                pump.run(until=pump.now + dt)
        _check_cluster(pump, watches)
    # Then the faults stay for a while, and then the network heals: one leader emerges.
    pump.run(until=pump.now + 5.0)
    pump.cut.clear()
    pump.run(until=pump.now + 20.0)
    _check_cluster(pump, watches)
    assert len(pump.leaders()) == 1, "a connected cluster elects a leader"
