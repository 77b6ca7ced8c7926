"""Terms have no dead end (issue 14): ``MAX_TERM``, ``MAX_TERM_STEP`` and the transfer rule, on the pure core.

docs/specification.md ("Terms have no dead end"): "No input can leave a cluster permanently unable to elect: terms
never reach a value from which no higher term can be sent and stored, and a
vote request flagged as a transfer is honoured only where a real transfer
could have produced it."  The argument is in docs/specification.md, "Terms have no dead end".

* A term above ``MAX_TERM`` (``2**62``) is bad input: dropped, counted,
  nothing changes (paper 5.1's "adopt the higher term" does not apply to a
  term no node can hold).
* One message raises a term by at most ``MAX_TERM_STEP``: from further ahead,
  the node moves that far, as a follower knowing no leader, and drops it.
* ``transfer=True`` skips leader stickiness (thesis 3.10, 4.2.3) only for a
  real vote of exactly the voter's term + 1, from a node other than the
  leader the voter knows for its term; otherwise the request is ordinary.
* A node at ``MAX_TERM`` never stands (it could not send the next term).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from almost_raft._messages import MAX_TERM, MAX_TERM_STEP, WIRE_MAX_TERM, Message, NodeId

from .helpers import (
    PEERS3,
    Deadline,
    Expect,
    Harness,
    Step,
    Tick,
    candidate,
    follower_of,
    fresh,
    idle_follower,
    leader,
    pre_candidate,
    requests,
)
from .test_rules import Row, _grant, _params, _refuse, _run

KEEP = Deadline.KEEP
REDRAW = Deadline.REDRAW
STEP = MAX_TERM_STEP


def test_the_bounds() -> None:
    """The wire carries every term a node can send; the step leaves 2**46 steps below MAX_TERM."""
    assert MAX_TERM == 2**62
    assert MAX_TERM + 1 <= WIRE_MAX_TERM
    assert MAX_TERM // MAX_TERM_STEP == 2**46


# ------------------------------------------------------------ above MAX_TERM

_ABOVE: dict[str, Callable[[int], Message]] = {
    "RequestVote": lambda t: RequestVote(t, "c"),
    "RequestVote-transfer": lambda t: RequestVote(t, "c", transfer=True),
    "RequestVote-pre-vote": lambda t: RequestVote(t, "c", pre_vote=True),
    "VoteResponse": lambda t: VoteResponse(t, "c", False),
    "VoteResponse-pre-vote-grant": lambda t: VoteResponse(t, "c", True, pre_vote=True),
    "Heartbeat": lambda t: Heartbeat(t, "c", 1),
    "HeartbeatResponse": lambda t: HeartbeatResponse(t, "c", False, 1),
    "TimeoutNow": lambda t: TimeoutNow(t, "c"),
}

_STARTS: dict[str, Callable[[], Harness]] = {
    "new": lambda: fresh(),
    "idle-follower": lambda: idle_follower(term=2),
    "follower": lambda: follower_of("b", 2),
    "pre-candidate": lambda: pre_candidate(term=2),
    "candidate": lambda: candidate(term=2),
    "leader": lambda: leader(term=2),
    "at-MAX_TERM": lambda: idle_follower(term=MAX_TERM),
}


@pytest.mark.parametrize("term", [MAX_TERM + 1, WIRE_MAX_TERM, 2**64], ids=["MAX_TERM+1", "2**63-1", "2**64"])
@pytest.mark.parametrize("kind", list(_ABOVE))
@pytest.mark.parametrize("start", list(_STARTS))
def test_a_term_above_max_term_is_bad_input(start: str, kind: str, term: int) -> None:
    """Issue 14 item 1: a term no node can hold changes nothing; it is dropped and counted (docs/specification.md, "bad input")."""
    h = _STARTS[start]()
    h.advance(0.1)
    before = h.snapshot()
    rejected = h.core.counters.messages_rejected
    h.check(Step(_ABOVE[kind](term)), Expect(deadline=KEEP))
    assert h.snapshot() == before
    assert h.core.counters.messages_rejected == rejected + 1


# -------------------------------------------------------------- one step

TERM = 3
FAR = TERM + STEP + 5
CLIMBED = TERM + STEP

STEP_ROWS = [
    Row(
        "far-heartbeat-moves-a-follower-one-step-and-is-dropped",
        lambda: follower_of("b", TERM),
        Step(Heartbeat(FAR, "c", 1), 0.1),
        Expect(persist=HardState(CLIMBED), events=(LeaderChanged(CLIMBED, None),), deadline=KEEP),
        role=Role.FOLLOWER,
        term=CLIMBED,
        leader_id=None,
    ),
    Row(
        "heartbeat-exactly-one-step-ahead-is-followed",
        lambda: follower_of("b", TERM),
        Step(Heartbeat(CLIMBED, "c", 1), 0.1),
        Expect(
            persist=HardState(CLIMBED),
            sends=(("c", HeartbeatResponse(CLIMBED, "a", True, 1)),),
            events=(LeaderChanged(CLIMBED, "c"),),
            deadline=REDRAW,
        ),
        role=Role.FOLLOWER,
        term=CLIMBED,
        leader_id="c",
    ),
    Row(
        "far-vote-request-moves-an-idle-follower-one-step-no-vote",
        lambda: idle_follower(term=TERM),
        Step(RequestVote(FAR, "c")),
        Expect(persist=HardState(CLIMBED), deadline=KEEP),
        role=Role.FOLLOWER,
        term=CLIMBED,
        voted_for=None,
    ),
    Row(
        "far-vote-request-to-a-sticky-node-changes-nothing",
        lambda: follower_of("b", TERM),
        Step(RequestVote(FAR, "c"), 0.1),
        Expect(sends=(("c", _refuse(TERM)),), deadline=KEEP),
        term=TERM,
    ),
    Row(
        "far-pre-vote-is-still-only-a-question",
        lambda: idle_follower(term=TERM),
        Step(RequestVote(FAR, "c", pre_vote=True)),
        Expect(sends=(("c", _grant(FAR, pre_vote=True)),), deadline=KEEP),
        term=TERM,
    ),
    Row(
        "far-answer-moves-a-leader-one-step-down",
        lambda: leader(term=TERM),
        Step(HeartbeatResponse(FAR, "b", False, 1), 0.1),
        Expect(persist=HardState(CLIMBED), events=(LeaderChanged(CLIMBED, None),), deadline=REDRAW),
        role=Role.FOLLOWER,
        term=CLIMBED,
        voted_for=None,
        leader_id=None,
    ),
    Row(
        "far-refusal-moves-a-candidate-one-step",
        lambda: candidate(term=TERM),
        Step(VoteResponse(FAR, "b", False)),
        Expect(persist=HardState(CLIMBED), deadline=REDRAW),
        role=Role.FOLLOWER,
        term=CLIMBED,
        voted_for=None,
    ),
    Row(
        # Standing would make it term + STEP + 1: it moves one step and waits.
        "timeout-now-one-step-ahead-moves-the-target-but-it-does-not-stand",
        lambda: idle_follower(term=TERM),
        Step(TimeoutNow(CLIMBED, "b")),
        Expect(persist=HardState(CLIMBED), deadline=KEEP),
        role=Role.FOLLOWER,
        term=CLIMBED,
    ),
    Row(
        "timeout-now-just-within-the-step-makes-the-target-stand",
        lambda: idle_follower(term=TERM),
        Step(TimeoutNow(CLIMBED - 1, "b")),
        Expect(
            persist=HardState(CLIMBED, "a"),
            sends=requests(CLIMBED, "a", PEERS3, transfer=True),
            deadline=REDRAW,
        ),
        role=Role.CANDIDATE,
        term=CLIMBED,
        voted_for="a",
    ),
]


@pytest.mark.parametrize("row", _params(STEP_ROWS))
def test_one_message_raises_a_term_by_at_most_max_term_step(row: Row) -> None:
    """Issue 14 item 1: a message from more than ``MAX_TERM_STEP`` ahead moves the node that far and is dropped.

    Paper 5.1 still holds within the step (a higher term is adopted); a
    far-ahead sender moves its receiver one step per message.
    """
    h = _run(row)
    assert h.core.counters.messages_rejected == (1 if row.id in _DROPPED else 0)


_DROPPED = {
    "far-heartbeat-moves-a-follower-one-step-and-is-dropped",
    "far-vote-request-moves-an-idle-follower-one-step-no-vote",
    "far-answer-moves-a-leader-one-step-down",
    "far-refusal-moves-a-candidate-one-step",
    "timeout-now-one-step-ahead-moves-the-target-but-it-does-not-stand",
}


def test_a_node_far_behind_catches_up_with_its_leaders_heartbeats() -> None:
    """A follower ``3.5 * MAX_TERM_STEP`` terms behind follows the leader at its fourth heartbeat, without standing."""
    h = idle_follower(term=1)
    ahead = 1 + int(3.5 * STEP)
    seen = []
    for seq in range(1, 6):
        out = h.step(Heartbeat(ahead, "b", seq), 0.01)
        seen.append((h.core.term, h.core.leader_id, bool(out.sends)))
    assert seen == [
        (1 + STEP, None, False),
        (1 + 2 * STEP, None, False),
        (1 + 3 * STEP, None, False),
        (ahead, "b", True),
        (ahead, "b", True),
    ]
    assert h.core.counters.elections_started == 0


# ----------------------------------------------------------- the transfer rule

TRANSFER_ROWS = [
    Row(
        "next-term-from-another-node-is-honoured",
        lambda: follower_of("b", 1),
        Step(RequestVote(2, "c", transfer=True), 0.5),
        Expect(persist=HardState(2, "c"), sends=(("c", _grant(2)),), events=(LeaderChanged(2, None),), deadline=REDRAW),
        role=Role.FOLLOWER,
        term=2,
        voted_for="c",
        leader_id=None,
    ),
    Row(
        "two-terms-ahead-is-an-ordinary-request",
        lambda: follower_of("b", 1),
        Step(RequestVote(3, "c", transfer=True), 0.5),
        Expect(sends=(("c", _refuse(1)),), deadline=KEEP),
        role=Role.FOLLOWER,
        term=1,
    ),
    Row(
        "max-term-transfer-is-an-ordinary-request",
        lambda: follower_of("b", 1),
        Step(RequestVote(MAX_TERM, "c", transfer=True), 0.5),
        Expect(sends=(("c", _refuse(1)),), deadline=KEEP),
        term=1,
    ),
    Row(
        "the-wire-maximum-is-dropped",
        lambda: follower_of("b", 1),
        Step(RequestVote(WIRE_MAX_TERM, "c", transfer=True), 0.5),
        Expect(deadline=KEEP),
        term=1,
    ),
    Row(
        "from-the-leader-itself-is-an-ordinary-request",
        lambda: follower_of("b", 1),
        Step(RequestVote(2, "b", transfer=True), 0.5),
        Expect(sends=(("b", _refuse(1)),), deadline=KEEP),
        term=1,
    ),
    Row(
        "a-pre-vote-is-never-a-transfer",
        lambda: follower_of("b", 1),
        Step(RequestVote(2, "c", pre_vote=True, transfer=True), 0.5),
        # Held like any pre-vote inside the window (answered at 1.5 + T), not granted at once.
        Expect(sends=(), deadline=2.5),
        term=1,
    ),
    Row(
        "the-leader-honours-the-transfer-it-started",
        lambda: leader(term=1),
        Step(RequestVote(2, "b", transfer=True), 0.1),
        Expect(persist=HardState(2, "b"), sends=(("b", _grant(2)),), events=(LeaderChanged(2, None),), deadline=REDRAW),
        role=Role.FOLLOWER,
        term=2,
        voted_for="b",
        leader_id=None,
    ),
    Row(
        "the-leader-refuses-a-transfer-two-terms-ahead",
        lambda: leader(term=1),
        Step(RequestVote(3, "b", transfer=True), 0.1),
        Expect(sends=(("b", _refuse(1)),), deadline=KEEP),
        role=Role.LEADER,
        term=1,
    ),
    Row(
        "a-restarted-node-honours-the-next-term",
        lambda: fresh(hard_state=HardState(4, "b")),
        Step(RequestVote(5, "c", transfer=True), 0.5),
        Expect(persist=HardState(5, "c"), sends=(("c", _grant(5)),), deadline=REDRAW),
        term=5,
        voted_for="c",
    ),
    Row(
        "a-restarted-node-refuses-a-far-transfer",
        lambda: fresh(hard_state=HardState(4, "b")),
        Step(RequestVote(9, "c", transfer=True), 0.5),
        Expect(sends=(("c", _refuse(4)),), deadline=KEEP),
        term=4,
    ),
    Row(
        "a-non-sticky-node-grants-a-far-transfer-as-an-ordinary-vote",
        lambda: idle_follower(term=1),
        Step(RequestVote(9, "c", transfer=True)),
        Expect(persist=HardState(9, "c"), sends=(("c", _grant(9)),), deadline=REDRAW),
        term=9,
        voted_for="c",
    ),
]


@pytest.mark.parametrize("row", _params(TRANSFER_ROWS))
def test_a_transfer_is_honoured_only_where_a_real_transfer_could_have_produced_it(row: Row) -> None:
    """Thesis 3.10 and 4.2.3, issue 14: ``transfer=True`` skips stickiness only for the voter's next term.

    A real transfer: the leader of the voter's term ``t`` sent ``TimeoutNow``
    to the candidate, which stands in ``t + 1``.  Any other request flagged
    ``transfer`` is ordinary, stickiness included, so one message cannot
    carry a sticky cluster to an arbitrary term.
    """
    _run(row)


# ------------------------------------------------------------- at MAX_TERM


def test_a_node_at_max_term_never_stands(caplog: pytest.LogCaptureFixture) -> None:
    """A node at ``MAX_TERM`` could not send the next term: it stays a follower and says so at ERROR, rarely."""
    h = idle_follower(term=MAX_TERM)
    with caplog.at_level(logging.INFO, logger="almost_raft"):
        for _ in range(5):
            h.check(Tick(), Expect(deadline=REDRAW))
            assert h.core.role is Role.FOLLOWER
        out = h.step(TimeoutNow(MAX_TERM, "b"))
    assert out.sends == ()
    assert h.core.term == MAX_TERM
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "once, not at every timeout"
    assert "MAX_TERM" in errors[0].getMessage()


def test_a_node_one_below_max_term_can_still_be_elected() -> None:
    """The last term is usable: a node at ``MAX_TERM - 1`` stands in ``MAX_TERM`` and wins."""
    h = leader(term=MAX_TERM)
    assert h.core.term == MAX_TERM
    assert h.core.role is Role.LEADER


# ------------------------------------------------------------------ property

_TERMS = st.one_of(
    st.integers(0, 8),
    st.integers(0, 3 * STEP),
    st.integers(MAX_TERM - 3, MAX_TERM + 3),
    st.integers(0, WIRE_MAX_TERM),
    st.integers(WIRE_MAX_TERM, 2**70),
)


@st.composite
def _any_message(draw: st.DrawFn) -> Message:
    sender: NodeId = draw(st.sampled_from(("b", "c")))
    term = draw(_TERMS)
    kind = draw(st.sampled_from(("RequestVote", "VoteResponse", "Heartbeat", "HeartbeatResponse", "TimeoutNow")))
    flag = st.booleans()
    match kind:
        case "RequestVote":
            pre_vote = draw(flag)
            return RequestVote(max(term, 1) if pre_vote else term, sender, pre_vote, draw(flag))
        case "VoteResponse":
            return VoteResponse(term, sender, draw(flag), draw(flag))
        case "Heartbeat":
            return Heartbeat(term, sender, draw(st.integers(0, 3)))
        case "HeartbeatResponse":
            return HeartbeatResponse(term, sender, draw(flag), draw(st.integers(0, 3)))
        case _:
            return TimeoutNow(term, sender)


_PROPERTY_STARTS: dict[str, Callable[[], Harness]] = {
    **{k: v for k, v in _STARTS.items() if k != "at-MAX_TERM"},
    "near-MAX_TERM": lambda: idle_follower(term=MAX_TERM - 2),
    "leader-near-MAX_TERM": lambda: leader(term=MAX_TERM - 1),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.sampled_from(list(_PROPERTY_STARTS)),
    steps=st.lists(st.tuples(_any_message(), st.floats(0, 1.5)), min_size=1, max_size=12),
)
def test_no_single_message_raises_a_term_beyond_the_bound(start: str, steps: list[tuple[Message, float]]) -> None:
    """Issue 14: whatever arrives, one message raises the term by at most ``MAX_TERM_STEP``, never past ``MAX_TERM``.

    Timers fire on the way (a timer raises a term by one, only below
    ``MAX_TERM``); every term the node sends fits the wire and ``MAX_TERM``.
    """
    h = _PROPERTY_STARTS[start]()
    for message, dt in steps:
        before = h.core.term
        outs = h.wait(dt)
        for out in outs:
            assert all(m.term <= MAX_TERM for _, m in out.sends)
        assert h.core.term - before <= len(outs), "a timer raises the term by one at most"
        assert h.core.term <= MAX_TERM
        before = h.core.term
        out = h.step(message)
        assert h.core.term - before <= MAX_TERM_STEP
        assert h.core.term <= MAX_TERM
        assert all(m.term <= MAX_TERM for _, m in out.sends)
        if out.persist is not None:
            assert out.persist.term <= MAX_TERM
