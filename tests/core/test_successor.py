"""The designated successor, held pre-votes and ``PeerDisconnected``, on the pure core.

docs/specification.md, "Designated successor", "Held pre-votes" and
"Connection closed"; issue 13, items 1 and 2.  Each row is a start state
reached through the public core API, one input, the full expected
``Output`` and the state after it, with the rule it checks:

* A leader names a successor in every heartbeat: the one it named before
  while that one acknowledges every round, otherwise the peer that
  acknowledged the newest round first (a voter before any acknowledgement).
* A follower named in the heartbeat it accepted sets its timer to exactly
  ``T`` after it (the end of its stickiness window); anyone else draws.
* A pre-vote that arrives inside the voter's stickiness window (leader
  stickiness, thesis 4.2.3 and 9.6) is held and answered when the window
  ends: granted if it really ended, refused if the term moved past it.
* A candidate whose pre-votes were granted inside its own window enters
  the vote phase when the window ends (its own vote obeys stickiness too,
  thesis 6.4.1), without asking again.
* ``PeerDisconnected`` of its leader makes the named successor ask for
  pre-votes at once; anything else changes nothing, and an id outside the
  view is refused and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from almost_raft import (
    HardState,
    Heartbeat,
    HeartbeatResponse,
    LeaderChanged,
    RequestVote,
    Role,
    TimeoutNow,
    VoteResponse,
)
from almost_raft._messages import NodeId

from .helpers import (
    HB,
    PEERS3,
    PEERS5,
    Deadline,
    Disconnect,
    Expect,
    Harness,
    Input,
    RemovePeer,
    Step,
    T,
    Tick,
    fresh,
    heartbeats,
    leader,
    requests,
)

HEARD = 1.5  # the follower rows accept their leader's heartbeat at this time: sticky until 2.5


def _hbr(term: int, seq: int, voter: str = "a") -> HeartbeatResponse:
    return HeartbeatResponse(term, voter, True, seq)


def _pre(term: int, voter: str, *, granted: bool) -> VoteResponse:
    return VoteResponse(term, voter, granted, pre_vote=True)


def named_follower(named: str | None = "a", *, successor: bool = True, peers: tuple[NodeId, ...] = PEERS3) -> Harness:
    """A follower of b in term 1 that accepted ``Heartbeat(1, b, 1, named)`` at 1.5."""
    h = fresh("a", peers, hard_state=HardState(0), successor=successor)
    h.step(Heartbeat(1, "b", 1, named), HEARD)
    assert h.core.leader_id == "b"
    return h


def holding(candidate: str = "c", term: int = 2) -> Harness:
    """A follower of b (heard at 1.5) holding ``c``'s pre-vote for *term*, which arrived at 2.25."""
    h = named_follower(None)
    out = h.step(RequestVote(term, candidate, pre_vote=True), 0.75)
    assert out.sends == ()
    return h


@dataclass(frozen=True)
class Row:
    """A start state, one input, the full expected ``Output``, and the role and term after."""

    id: str
    start: Callable[[], Harness]
    input: Input
    expect: Expect
    role: Role | None = None
    term: int | None = None


FOLLOWER_ROWS = [
    Row(
        # Designated successor: the timer is the end of the stickiness window, not a draw.
        "named-follower-stands-exactly-T-after-the-heartbeat",
        lambda: fresh("a", PEERS3, successor=True),
        Step(Heartbeat(1, "b", 1, "a"), HEARD),
        Expect(
            persist=HardState(1, None),
            sends=(("b", _hbr(1, 1)),),
            events=(LeaderChanged(1, "b"),),
            deadline=HEARD + T,
        ),
        role=Role.FOLLOWER,
        term=1,
    ),
    Row(
        "a-follower-named-again-moves-its-timer-to-T-after-the-new-heartbeat",
        lambda: named_follower("a"),
        Step(Heartbeat(1, "b", 2, "a"), 0.25),
        Expect(sends=(("b", _hbr(1, 2)),), deadline=HEARD + 0.25 + T),
        role=Role.FOLLOWER,
    ),
    Row(
        "a-follower-not-named-draws-its-timeout",
        lambda: fresh("a", PEERS3, successor=True),
        Step(Heartbeat(1, "b", 1, "c"), HEARD),
        Expect(
            persist=HardState(1, None),
            sends=(("b", _hbr(1, 1)),),
            events=(LeaderChanged(1, "b"),),
            deadline=Deadline.REDRAW,
        ),
    ),
    Row(
        "a-follower-that-was-named-and-is-no-more-draws-again",
        lambda: named_follower("a"),
        Step(Heartbeat(1, "b", 2, "c"), 0.25),
        Expect(sends=(("b", _hbr(1, 2)),), deadline=Deadline.REDRAW),
    ),
    Row(
        "with-the-switch-off-a-named-follower-draws",
        lambda: fresh("a", PEERS3, successor=False),
        Step(Heartbeat(1, "b", 1, "a"), HEARD),
        Expect(
            persist=HardState(1, None),
            sends=(("b", _hbr(1, 1)),),
            events=(LeaderChanged(1, "b"),),
            deadline=Deadline.REDRAW,
        ),
    ),
    Row(
        # It stands through a pre-vote round, like any node whose timer fired (thesis 9.6).
        "the-successor-asks-for-pre-votes-when-its-timer-fires",
        lambda: named_follower("a"),
        Tick(T),
        Expect(
            sends=requests(2, "a", PEERS3, pre_vote=True),
            events=(LeaderChanged(1, None),),
            deadline=Deadline.REDRAW,
        ),
        role=Role.CANDIDATE,
        term=1,
    ),
]

HOLD_ROWS = [
    Row(
        "a-pre-vote-inside-the-window-is-held-not-refused",
        lambda: named_follower(None),
        Step(RequestVote(2, "c", pre_vote=True), 0.9),
        Expect(deadline=HEARD + T),
        role=Role.FOLLOWER,
        term=1,
    ),
    Row(
        # Answered the moment the window ends, as if it had arrived then: granted.
        "a-held-pre-vote-is-granted-when-the-window-ends",
        holding,
        Tick(0.25),
        Expect(sends=(("c", _pre(2, "a", granted=True)),), deadline=Deadline.LATER),
        role=Role.FOLLOWER,
        term=1,
    ),
    Row(
        # The leader was heard again: the window moved, and the request waits for its new end.
        "a-heartbeat-moves-the-answer-to-the-new-end-of-the-window",
        holding,
        Step(Heartbeat(1, "b", 2), 0.125),
        Expect(sends=(("b", _hbr(1, 2)),), deadline=HEARD + 0.875 + T),
        role=Role.FOLLOWER,
    ),
    Row(
        # The term moved past the request meanwhile: refused with the voter's term (paper 5.1).
        "a-held-pre-vote-is-refused-when-the-term-moved-past-it",
        lambda: _then(holding(), Step(Heartbeat(2, "b", 1), 0.05)),
        Tick(None),
        Expect(sends=(("c", _pre(2, "a", granted=False)),), deadline=Deadline.LATER),
        term=2,
    ),
    Row(
        # One request per candidate waits: the latest replaces an earlier one.
        "a-second-request-of-the-same-candidate-replaces-the-first",
        lambda: _then(holding(term=2), Step(RequestVote(3, "c", pre_vote=True), 0.01)),
        Tick(None),
        Expect(sends=(("c", _pre(3, "a", granted=True)),), deadline=Deadline.LATER),
    ),
    Row(
        # A node that wins (here standing at once on its leader's TimeoutNow) is sticky
        # for its whole term: what it held is refused at once, with its new term (thesis 4.2.3).
        "a-node-that-wins-refuses-what-it-held",
        lambda: _then(
            _then(fresh("a", PEERS3), Step(RequestVote(1, "c", pre_vote=True), 0.125)),
            Step(TimeoutNow(0, "b"), 0.125),
        ),
        Step(VoteResponse(1, "b", True), 0.125),
        Expect(
            sends=(("c", _pre(1, "a", granted=False)), *heartbeats(1, "a", 1, PEERS3)),
            events=(LeaderChanged(1, "a"),),
            deadline=Deadline.HEARTBEAT,
        ),
        role=Role.LEADER,
        term=1,
    ),
    Row(
        "a-real-vote-inside-the-window-is-still-refused-at-once",
        lambda: named_follower(None),
        Step(RequestVote(2, "c"), 0.9),
        Expect(sends=(("c", VoteResponse(1, "a", False)),), deadline=Deadline.KEEP),
        term=1,
    ),
]

DISCONNECT_ROWS = [
    Row(
        # Connection closed: the named successor asks at once; voters answer when their
        # windows end and its own vote waits for its own window (thesis 6.4.1).
        "the-named-successor-asks-for-pre-votes-when-its-leader-disconnects",
        lambda: named_follower("a"),
        Disconnect("b", 0.1),
        Expect(
            sends=requests(2, "a", PEERS3, pre_vote=True),
            events=(LeaderChanged(1, None),),
            deadline=Deadline.REDRAW,
        ),
        role=Role.CANDIDATE,
        term=1,
    ),
    Row(
        # Granted inside its own window: it stands for real when the window ends, not before.
        "pre-votes-granted-inside-its-own-window-wait-for-the-window",
        lambda: _then(named_follower("a"), Disconnect("b", 0.1)),
        Step(_pre(2, "c", granted=True), 0.1),
        Expect(deadline=HEARD + T),
        role=Role.CANDIDATE,
        term=1,
    ),
    Row(
        "and-it-enters-the-vote-phase-when-the-window-ends-without-asking-again",
        lambda: _then(_then(named_follower("a"), Disconnect("b", 0.1)), Step(_pre(2, "c", granted=True), 0.1)),
        Tick(None),
        Expect(
            persist=HardState(2, "a"),
            sends=requests(2, "a", PEERS3),
            deadline=Deadline.REDRAW,
        ),
        role=Role.CANDIDATE,
        term=2,
    ),
    Row(
        "a-follower-not-named-keeps-its-timer",
        lambda: named_follower("c"),
        Disconnect("b", 0.1),
        Expect(deadline=Deadline.KEEP),
        role=Role.FOLLOWER,
    ),
    Row(
        "a-notice-about-another-peer-changes-nothing",
        lambda: named_follower("a"),
        Disconnect("c", 0.1),
        Expect(deadline=Deadline.KEEP),
        role=Role.FOLLOWER,
    ),
    Row(
        "with-the-switch-off-the-named-follower-keeps-its-timer",
        lambda: named_follower("a", successor=False),
        Disconnect("b", 0.1),
        Expect(deadline=Deadline.KEEP),
        role=Role.FOLLOWER,
    ),
    Row(
        "a-candidate-ignores-it",
        lambda: _then(named_follower("a"), Tick(None)),
        Disconnect("b", 0.01),
        Expect(deadline=Deadline.KEEP),
        role=Role.CANDIDATE,
    ),
]


def _then(h: Harness, item: Input) -> Harness:
    h.feed(item)
    return h


def _run(row: Row) -> Harness:
    h = row.start()
    h.check(row.input, row.expect)
    if row.role is not None:
        assert h.core.role is row.role
    if row.term is not None:
        assert h.core.term == row.term
    return h


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in FOLLOWER_ROWS])
def test_a_named_follower_stands_when_its_window_ends(row: Row) -> None:
    """Designated successor: exactly ``T`` after the heartbeat that named it; everyone else draws (paper 5.2)."""
    _run(row)


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in HOLD_ROWS])
def test_a_pre_vote_inside_the_stickiness_window_is_answered_when_it_ends(row: Row) -> None:
    """Held pre-votes: stickiness (thesis 4.2.3) still decides; only the time of the answer moves."""
    _run(row)


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in DISCONNECT_ROWS])
def test_a_closed_connection_to_the_leader_starts_its_successor(row: Row) -> None:
    """Connection closed: the successor's pre-vote starts at once, its vote no sooner than its window allows."""
    _run(row)


def test_a_removed_peer_is_answered_nothing() -> None:
    """Membership: a peer removed from the view gets no answer to what it asked before."""
    h = holding()
    timer = h.core.next_deadline
    out = h.feed(RemovePeer("c", 0.125))
    assert out.sends == ()
    assert out.next_deadline > HEARD + T, "nothing waits for the window any more: the election timer is next"
    assert timer == HEARD + T
    h.tick(HEARD + T - h.now)  # the window ends: nothing to answer
    assert h.outputs[-1].sends == ()


def test_a_held_pre_vote_changes_nothing_on_the_voter() -> None:
    """Thesis 9.6: a pre-vote is a question: holding and answering it moves no term, vote or timer."""
    h = named_follower(None)
    before = (h.core.term, h.core.voted_for, h.core.leader_id, h.core.role)
    timer = h.core.next_deadline
    h.step(RequestVote(2, "c", pre_vote=True), 0.75)
    out = h.tick()
    assert out.persist is None
    assert out.events == ()
    assert (h.core.term, h.core.voted_for, h.core.leader_id, h.core.role) == before
    assert h.core.next_deadline == timer
    assert h.core.counters.pre_votes_held == 1


def test_an_unknown_or_own_id_is_refused_and_counted() -> None:
    """Bad control input changes nothing and is counted (docs/specification.md, "Failure handling")."""
    h = named_follower("a")
    deadline = h.core.next_deadline
    for node_id in ("z", "a"):
        out = h.feed(Disconnect(node_id, 0.01))
        assert (out.sends, out.events, out.persist) == ((), (), None)
    assert h.core.next_deadline == deadline
    assert h.core.role is Role.FOLLOWER
    assert h.core.counters.messages_rejected == 2
    assert h.core.counters.rejected_by_kind == {"PeerDisconnected": 2}


# ----------------------------------------------------------- the leader's choice


def _successor(out_sends: tuple[tuple[object, object], ...]) -> set[object]:
    return {m.successor for _, m in out_sends if isinstance(m, Heartbeat)}


@dataclass(frozen=True)
class Naming:
    """After winning (round 1 names the first voter), the acknowledgements ``(peer, seq, dt)``, then round 2."""

    id: str
    peers: tuple[NodeId, ...]
    acks: tuple[tuple[str, int, float], ...]
    named: str | None
    successor: bool = True


NAMING_ROWS = [
    Naming("kept-while-it-acknowledges-every-round", PEERS3, (("c", 1, 0.001), ("b", 1, 0.002)), "b"),
    Naming("another-when-it-missed-the-last-round", PEERS3, (("c", 1, 0.001),), "c"),
    Naming(
        "the-fastest-acknowledgement-of-the-newest-round",
        PEERS5,
        (("e", 1, 0.001), ("c", 1, 0.001), ("d", 1, 0.001)),
        "e",
    ),
    Naming("none-with-the-switch-off", PEERS3, (("b", 1, 0.001),), None, successor=False),
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in NAMING_ROWS])
def test_a_leader_names_its_successor_in_every_round(row: Naming) -> None:
    """Designated successor, the leader's side: deterministic, stable while the successor keeps up."""
    h = leader("a", row.peers, successor=row.successor)
    first = h.outputs[-1].sends
    voter = row.peers[0]  # the builder collects votes in view order: the first peer voted
    assert first == heartbeats(1, "a", 1, row.peers) if not row.successor else _successor(first) == {voter}
    for peer, seq, dt in row.acks:
        h.step(HeartbeatResponse(1, peer, True, seq), dt)
    out = h.tick()
    assert out.sends == tuple((p, Heartbeat(1, "a", 2, row.named)) for p in row.peers)
    assert h.core.named_successor == row.named


def test_a_leader_names_another_successor_once_the_named_one_disconnects() -> None:
    """PeerDisconnected at a leader: the successor it named is gone; the next round names another."""
    h = leader("a", PEERS3, successor=True)
    for peer in PEERS3:
        h.step(HeartbeatResponse(1, peer, True, 1), 0.001)
    out = h.feed(Disconnect("b", 0.001))
    assert (out.sends, out.events, out.persist) == ((), (), None)
    out = h.tick()
    assert _successor(out.sends) == {"c"}


def test_a_newcomer_learns_the_successor_with_its_first_heartbeat() -> None:
    """A leader greets an added peer at once (docs/specification.md, "Membership"), successor included."""
    h = leader("a", PEERS3, successor=True)
    out = h.core.add_peer("d", h.now)
    assert out.sends == (("d", Heartbeat(1, "a", 1, "b")),)


def test_a_heartbeat_never_names_its_leader() -> None:
    """The message refuses it: a leader never hands over to itself."""
    with pytest.raises(ValueError, match="successor"):
        Heartbeat(1, "a", 1, "a")
    with pytest.raises(TypeError, match="successor"):
        Heartbeat(1, "a", 1, True)


def test_the_named_successor_wins_before_any_other_timer_fires() -> None:
    """Three cores, the leader gone: the successor stands at ``T`` and wins; nobody else stood."""
    from .helpers import Pump

    pump = Pump.build(("a", "b", "c"), successor=True, min_nodes=3)
    pump.run(until=5.0)
    (old,) = pump.leaders()
    term = pump.members[old].core.term
    named = pump.members[old].core.named_successor
    assert named is not None
    pump.run(until=pump.now + 2 * HB)
    last_heard = pump.members[named].core.last_leader_contact
    # The leader crashes: it is cut off from everyone.
    pump.isolate(old)
    pump.run(until=pump.now + 3 * T)
    new = {i: t for i, t in pump.leaders().items() if i != old}
    assert new == {named: term + 1}
    assert pump.members[named].core.counters.elections_won == 1
    others = [i for i in ("a", "b", "c") if i not in (old, named)]
    assert all(pump.members[i].core.counters.pre_votes_started == 0 for i in others)
    # It stood exactly when its window ended.
    assert pump.members[named].core.counters.pre_votes_started == 1
    assert last_heard + T <= pump.now
