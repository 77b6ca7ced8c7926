"""The election rules, one table per rule, on the pure core (no event loop).

In the style of etcd raft's ``TestStateTransition`` and ``raft_paper_test.go``:
each row is a start state (built through the public core API in
``helpers``), one input, and the whole expected ``Output`` (persist, sends,
events, and how ``next_deadline`` moves).  Each test names the section of the
Raft paper (Ongaro & Ousterhout 2014) or of Ongaro's thesis (2014) behind it.
"""

from __future__ import annotations

import random
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
from almost_raft._core import Election
from almost_raft._messages import Message, NodeId

from .helpers import (
    HB,
    LEASE,
    PEERS3,
    PEERS5,
    T_MAX,
    AddPeer,
    Deadline,
    Expect,
    Harness,
    Input,
    Pump,
    RemovePeer,
    Step,
    T,
    Tick,
    Transfer,
    candidate,
    follower_of,
    fresh,
    heartbeats,
    idle_follower,
    leader,
    make_config,
    pre_candidate,
    requests,
    role,
)

KEEP = Deadline.KEEP
REDRAW = Deadline.REDRAW
HEARTBEAT = Deadline.HEARTBEAT
LATER = Deadline.LATER


@dataclass(frozen=True)
class Row:
    """One table row: a start state, an input, the full expected Output, and the state after."""

    id: str
    start: Callable[[], Harness]
    input: Input
    expect: Expect
    role: Role | None = None
    term: int | None = None
    voted_for: NodeId | str | None = "unchanged"
    leader_id: NodeId | str | None = "unchanged"


def _run(row: Row) -> Harness:
    h = row.start()
    voted_before = h.core.voted_for
    leader_before = h.core.leader_id
    h.check(row.input, row.expect)
    if row.role is not None:
        assert h.core.role is row.role
    if row.term is not None:
        assert h.core.term == row.term
    assert h.core.voted_for == (voted_before if row.voted_for == "unchanged" else row.voted_for)
    assert h.core.leader_id == (leader_before if row.leader_id == "unchanged" else row.leader_id)
    return h


def _params(rows: list[Row]) -> list[object]:
    return [pytest.param(r, id=r.id) for r in rows]


def _grant(term: int, voter: NodeId = "a", *, pre_vote: bool = False) -> VoteResponse:
    return VoteResponse(term, voter, True, pre_vote=pre_vote)


def _refuse(term: int, voter: NodeId = "a", *, pre_vote: bool = False) -> VoteResponse:
    return VoteResponse(term, voter, False, pre_vote=pre_vote)


# ----------------------------------------------------------------- timers


def test_election_timeouts_are_drawn_afresh_each_round_from_the_injected_rng() -> None:
    """Paper 5.2: election timeouts are chosen randomly from a fixed interval, anew for each round.

    The only source of randomness is the injected ``random.Random``: a twin
    seeded alike predicts every deadline, each round draws again, and every
    draw lies in ``[T, T_max]``.
    """
    h = fresh(seed=42)
    twin = random.Random(42)
    assert h.core.next_deadline == 0.0 + twin.uniform(T, T_MAX)
    draws = []
    for _ in range(6):
        out = h.tick()  # a pre-vote round nobody answers; each times out and starts again
        expected_timeout = twin.uniform(T, T_MAX)
        assert out.next_deadline == h.now + expected_timeout
        assert T <= expected_timeout <= T_MAX
        draws.append(expected_timeout)
        assert out.sends == requests(1, "a", PEERS3, pre_vote=True)
    assert len(set(draws)) == len(draws), "each round draws a new timeout"


def test_same_seed_same_deadlines_other_seed_other_deadlines() -> None:
    """Paper 5.2 / STYLE: randomness comes only from the injected rng, so a seed replays a run."""

    def deadlines(seed: int) -> list[float]:
        h = fresh(seed=seed)
        return [h.tick().next_deadline for _ in range(5)]

    assert deadlines(3) == deadlines(3)
    assert deadlines(3) != deadlines(4)


def test_equal_bounds_mean_no_randomness() -> None:
    """Specification: ``election_timeout_max == election_timeout`` means no randomness: the rng is never used."""
    h = fresh(election_timeout_max=T)
    state = h.rng.getstate()
    assert h.core.next_deadline == T
    for k in range(1, 5):
        out = h.tick()
        assert h.now == k * T
        assert out.next_deadline == h.now + T
    out = h.step(Heartbeat(1, "b", 1), 0.5)
    assert out.next_deadline == h.now + T
    assert h.rng.getstate() == state, "equal bounds must not consume the rng"


def test_tick_before_the_deadline_does_nothing() -> None:
    """Paper 5.2: a node stands only when its election timeout elapses; an early tick is a no-op."""
    for h in (fresh(), follower_of("b", 1), candidate(), leader()):
        before = h.snapshot()
        h.check(Tick(0.0), Expect(deadline=KEEP))
        assert h.snapshot() == before
        h.check(Tick((h.core.next_deadline - h.now) / 2), Expect(deadline=KEEP))


# --------------------------------------------------------------- pre-vote

PRE_VOTE_ROWS = [
    Row(
        "follower-timeout-asks-pre-votes-for-term+1",
        lambda: idle_follower(term=2),
        Tick(),
        Expect(sends=requests(3, "a", PEERS3, pre_vote=True), deadline=REDRAW),
        role=Role.CANDIDATE,
        term=2,
    ),
    Row(
        "follower-of-a-leader-times-out-and-forgets-it",
        lambda: follower_of("b", 1),
        Tick(),
        Expect(
            sends=requests(2, "a", PEERS3, pre_vote=True),
            events=(LeaderChanged(1, None),),
            deadline=REDRAW,
        ),
        role=Role.CANDIDATE,
        term=1,
        leader_id=None,
    ),
    Row(
        "quorum-of-pre-votes-starts-a-real-election",
        lambda: pre_candidate(term=2),
        Step(_grant(3, "b", pre_vote=True)),
        Expect(persist=HardState(3, "a"), sends=requests(3, "a", PEERS3), deadline=REDRAW),
        role=Role.CANDIDATE,
        term=3,
        voted_for="a",
    ),
    Row(
        "one-pre-vote-of-five-is-not-a-quorum",
        lambda: pre_candidate(peers=PEERS5),
        Step(_grant(1, "b", pre_vote=True)),
        Expect(deadline=KEEP),
        role=Role.CANDIDATE,
        term=0,
    ),
    Row(
        "without-pre-vote-the-timeout-raises-the-term",
        lambda: idle_follower(pre_vote=False),
        Tick(),
        Expect(persist=HardState(1, "a"), sends=requests(1, "a", PEERS3), deadline=REDRAW),
        role=Role.CANDIDATE,
        term=1,
        voted_for="a",
    ),
    Row(
        "pre-vote-granted-without-changing-term-or-vote",
        lambda: idle_follower(term=2, voted_for="c"),
        Step(RequestVote(3, "b", pre_vote=True)),
        Expect(sends=(("b", _grant(3, pre_vote=True)),), deadline=KEEP),
        role=Role.FOLLOWER,
        term=2,
    ),
    Row(
        "pre-vote-for-a-far-term-changes-nothing",
        lambda: idle_follower(term=1),
        Step(RequestVote(7, "b", pre_vote=True)),
        Expect(sends=(("b", _grant(7, pre_vote=True)),), deadline=KEEP),
        role=Role.FOLLOWER,
        term=1,
    ),
    Row(
        "pre-vote-for-the-current-term-refused-with-own-term",
        lambda: idle_follower(term=2),
        Step(RequestVote(2, "b", pre_vote=True)),
        Expect(sends=(("b", _refuse(2, pre_vote=True)),), deadline=KEEP),
        role=Role.FOLLOWER,
        term=2,
    ),
    Row(
        "stale-pre-vote-refused-with-own-term",
        lambda: idle_follower(term=4),
        Step(RequestVote(3, "b", pre_vote=True)),
        Expect(sends=(("b", _refuse(4, pre_vote=True)),), deadline=KEEP),
        term=4,
    ),
    Row(
        "pre-vote-refusal-with-a-higher-term-is-adopted",
        lambda: pre_candidate(term=0),
        Step(_refuse(5, "b", pre_vote=True)),
        Expect(persist=HardState(5, None), deadline=LATER),
        role=Role.FOLLOWER,
        term=5,
    ),
    Row(
        "pre-vote-grant-after-the-real-election-started-is-ignored",
        lambda: candidate(term=1),
        Step(_grant(2, "b", pre_vote=True)),
        Expect(deadline=KEEP),
        role=Role.CANDIDATE,
        term=1,
    ),
    Row(
        "pre-vote-grant-for-another-term-is-ignored",
        lambda: pre_candidate(term=2),
        Step(_grant(5, "b", pre_vote=True)),
        Expect(deadline=KEEP),
        role=Role.CANDIDATE,
        term=2,
    ),
]


@pytest.mark.parametrize("row", _params(PRE_VOTE_ROWS))
def test_pre_vote(row: Row) -> None:
    """Thesis 9.6: a node asks for pre-votes for ``term + 1`` without raising its term.

    Only a quorum of pre-votes lets it raise the term and ask for real votes;
    a pre-vote request never changes the receiver's term or vote.
    """
    h = _run(row)
    if row.id == "follower-timeout-asks-pre-votes-for-term+1":
        assert h.core.in_pre_vote


def test_pre_vote_request_never_changes_the_receiver() -> None:
    """Thesis 9.6: a pre-vote is only a question; however it is answered, term and vote stay."""
    starts: tuple[Callable[[], Harness], ...] = (
        lambda: idle_follower(term=2, voted_for="c"),
        lambda: follower_of("b", 2),
    )
    for start in starts:
        for term in (1, 2, 3, 9):
            h = start()
            before = (h.core.role, h.core.term, h.core.voted_for, h.core.leader_id)
            out = h.step(RequestVote(term, "b", pre_vote=True), 0.1)
            assert out.persist is None
            assert out.events == ()
            assert (h.core.role, h.core.term, h.core.voted_for, h.core.leader_id) == before


# -------------------------------------------------------- leader stickiness

STICKY_ROWS = [
    Row(
        "vote-refused-after-a-heartbeat",
        lambda: follower_of("b", 1),
        Step(RequestVote(2, "c"), 0.5),
        Expect(sends=(("c", _refuse(1)),), deadline=KEEP),
        role=Role.FOLLOWER,
        term=1,
    ),
    Row(
        "vote-for-a-far-term-refused-and-term-not-adopted",
        lambda: follower_of("b", 1),
        Step(RequestVote(9, "c"), 0.5),
        Expect(sends=(("c", _refuse(1)),), deadline=KEEP),
        role=Role.FOLLOWER,
        term=1,
    ),
    Row(
        # Held, not refused: answered when the window ends at 1.5 + T (docs/specification.md, "Held pre-votes").
        "pre-vote-held-after-a-heartbeat",
        lambda: follower_of("b", 1),
        Step(RequestVote(2, "c", pre_vote=True), 0.5),
        Expect(sends=(), deadline=2.5),
        term=1,
    ),
    Row(
        "transfer-overrides-stickiness",
        lambda: follower_of("b", 1),
        Step(RequestVote(2, "c", transfer=True), 0.5),
        Expect(
            persist=HardState(2, "c"),
            sends=(("c", _grant(2)),),
            events=(LeaderChanged(2, None),),
            deadline=REDRAW,
        ),
        role=Role.FOLLOWER,
        term=2,
        voted_for="c",
        leader_id=None,
    ),
    Row(
        "vote-refused-just-after-start",
        lambda: fresh(),
        Step(RequestVote(1, "b"), 0.5),
        Expect(sends=(("b", _refuse(0)),), deadline=KEEP),
        term=0,
    ),
    Row(
        "pre-vote-held-just-after-start",
        lambda: fresh(),
        Step(RequestVote(1, "b", pre_vote=True), 0.5),
        Expect(sends=(), deadline=T),
        term=0,
    ),
    Row(
        "restarted-node-refuses-votes-for-T",
        lambda: fresh(hard_state=HardState(4, "c")),
        Step(RequestVote(5, "b"), 0.9),
        Expect(sends=(("b", _refuse(4)),), deadline=KEEP),
        term=4,
    ),
    Row(
        "transfer-overrides-start-stickiness",
        lambda: fresh(),
        Step(RequestVote(1, "b", transfer=True), 0.5),
        Expect(persist=HardState(1, "b"), sends=(("b", _grant(1)),), deadline=REDRAW),
        term=1,
        voted_for="b",
    ),
    Row(
        "leader-refuses-votes",
        lambda: leader(),
        Step(RequestVote(2, "b"), 0.1),
        Expect(sends=(("b", _refuse(1)),), deadline=KEEP),
        role=Role.LEADER,
        term=1,
    ),
    Row(
        "leader-refuses-pre-votes",
        lambda: leader(),
        Step(RequestVote(2, "b", pre_vote=True), 0.1),
        Expect(sends=(("b", _refuse(1, pre_vote=True)),), deadline=KEEP),
        role=Role.LEADER,
        term=1,
    ),
    Row(
        "leader-grants-a-transfer-vote-and-steps-down",
        lambda: leader(),
        Step(RequestVote(2, "b", transfer=True), 0.1),
        Expect(
            persist=HardState(2, "b"),
            sends=(("b", _grant(2)),),
            events=(LeaderChanged(2, None),),
            deadline=REDRAW,
        ),
        role=Role.FOLLOWER,
        term=2,
        voted_for="b",
        leader_id=None,
    ),
]


@pytest.mark.parametrize("row", _params(STICKY_ROWS))
def test_leader_stickiness(row: Row) -> None:
    """Thesis 4.2.3 and 9.6: a node that heard from a live leader within ``T`` grants no vote and no pre-vote.

    It refuses votes, and holds pre-votes until its window ends (a leader
    refuses them: its window never ends while it leads).  It does not even
    adopt the requester's term, so a returning node cannot
    depose a healthy leader; a node that has just started behaves the same
    (thesis 6.4.1: a restart cannot cut a lease short); ``transfer=True``
    overrides it (thesis 3.10).
    """
    _run(row)


def test_stickiness_ends_T_after_the_last_heartbeat() -> None:
    """Thesis 4.2.3: stickiness lasts ``T`` from the last heartbeat, then votes are granted again."""
    h = follower_of("b", 1, heard_at=1.5)
    h.step(Heartbeat(1, "b", 2), 0.25)  # heard again at 1.75: sticky until 2.75
    deadline = h.core.next_deadline
    assert deadline > 2.75
    out = h.step(RequestVote(2, "c"), 2.7 - h.now)
    assert out.sends == (("c", _refuse(1)),)
    # Between the end of stickiness and the timer: a vote for a higher term is granted.
    out = h.step(RequestVote(2, "c"), (2.75 + deadline) / 2 - h.now)
    assert out.sends == (("c", _grant(2)),)
    assert out.persist == HardState(2, "c")


# ---------------------------------------------------------------- voting

VOTE_ROWS = [
    Row(
        "grant-and-persist-the-vote-for-a-new-term",
        lambda: idle_follower(term=1),
        Step(RequestVote(2, "b")),
        Expect(persist=HardState(2, "b"), sends=(("b", _grant(2)),), deadline=REDRAW),
        role=Role.FOLLOWER,
        term=2,
        voted_for="b",
    ),
    Row(
        "grant-in-the-current-term-when-no-vote-yet",
        lambda: idle_follower(term=2),
        Step(RequestVote(2, "b")),
        Expect(persist=HardState(2, "b"), sends=(("b", _grant(2)),), deadline=REDRAW),
        term=2,
        voted_for="b",
    ),
    Row(
        "refuse-a-second-candidate-in-the-same-term",
        lambda: idle_follower(term=2, voted_for="c"),
        Step(RequestVote(2, "b")),
        Expect(sends=(("b", _refuse(2)),), deadline=KEEP),
        term=2,
    ),
    Row(
        "repeat-the-grant-to-the-same-candidate",
        lambda: idle_follower(term=2, voted_for="b"),
        Step(RequestVote(2, "b")),
        Expect(sends=(("b", _grant(2)),), deadline=REDRAW),
        term=2,
    ),
    Row(
        "refuse-a-stale-term-with-own-term",
        lambda: idle_follower(term=3),
        Step(RequestVote(2, "b")),
        Expect(sends=(("b", _refuse(3)),), deadline=KEEP),
        term=3,
    ),
    Row(
        "a-higher-term-frees-the-vote",
        lambda: idle_follower(term=2, voted_for="c"),
        Step(RequestVote(3, "b")),
        Expect(persist=HardState(3, "b"), sends=(("b", _grant(3)),), deadline=REDRAW),
        term=3,
        voted_for="b",
    ),
    Row(
        "candidate-refuses-a-rival-of-its-term",
        lambda: candidate(term=1),
        Step(RequestVote(1, "b")),
        Expect(sends=(("b", _refuse(1)),), deadline=KEEP),
        role=Role.CANDIDATE,
        term=1,
    ),
    Row(
        "candidate-grants-a-higher-term-and-steps-down",
        lambda: candidate(term=1),
        Step(RequestVote(2, "b")),
        Expect(persist=HardState(2, "b"), sends=(("b", _grant(2)),), deadline=REDRAW),
        role=Role.FOLLOWER,
        term=2,
        voted_for="b",
    ),
    Row(
        "a-node-that-knows-the-leader-of-the-term-votes-for-no-one-else",
        lambda: follower_of("b", 1),
        Step(RequestVote(1, "c", transfer=True), 0.1),
        Expect(sends=(("c", _refuse(1)),), deadline=KEEP),
        term=1,
    ),
]


@pytest.mark.parametrize("row", _params(VOTE_ROWS))
def test_one_vote_per_term(row: Row) -> None:
    """Paper 5.2 and Figure 2: at most one vote per term, saved before the answer is sent.

    The vote is in the same ``Output.persist`` as the grant (the caller saves
    before sending); a grant carries the requested term, a refusal the
    voter's own term (paper 5.1).
    """
    _run(row)


def test_votes_are_counted_by_distinct_voter_id() -> None:
    """Paper 5.2: a candidate wins with votes from a majority of *servers*; a duplicated answer counts once."""
    h = candidate(peers=PEERS5)
    for _ in range(3):
        h.check(Step(_grant(1, "b")), Expect(deadline=KEEP))
        assert h.core.role is Role.CANDIDATE
    h.check(
        Step(_grant(1, "c")),
        Expect(sends=heartbeats(1, "a", 1, PEERS5), events=(LeaderChanged(1, "a"),), deadline=HEARTBEAT),
    )
    assert h.core.role is Role.LEADER
    assert h.core.counters.elections_won == 1


def test_pre_votes_are_counted_by_distinct_voter_id() -> None:
    """Thesis 9.6 with paper 5.2: pre-votes too are counted once per voter."""
    h = pre_candidate(peers=PEERS5)
    for _ in range(3):
        h.check(Step(_grant(1, "b", pre_vote=True)), Expect(deadline=KEEP))
        assert h.core.in_pre_vote
    h.check(
        Step(_grant(1, "c", pre_vote=True)),
        Expect(persist=HardState(1, "a"), sends=requests(1, "a", PEERS5), deadline=REDRAW),
    )


def test_votes_of_another_term_do_not_count() -> None:
    """Paper 5.2: only votes for the candidate's current term count (a stale grant is ignored)."""
    h = candidate(peers=PEERS5, term=2)
    h.check(Step(_grant(1, "b")), Expect(deadline=KEEP))
    h.check(Step(_grant(1, "c")), Expect(deadline=KEEP))
    assert h.core.role is Role.CANDIDATE


# ------------------------------------------------------- higher-term rule

_STARTS: dict[str, Callable[[], Harness]] = {
    "follower-with-leader": lambda: follower_of("b", 2),
    "idle-follower": lambda: idle_follower(term=2),
    "pre-candidate": lambda: pre_candidate(term=2),
    "candidate": lambda: candidate(term=2),
    "leader": lambda: leader(term=2),
}

_HIGHER: dict[str, Message] = {
    # A transfer is honoured only for the voter's next term (see test_terms.py).
    "RequestVote-transfer": RequestVote(3, "c", transfer=True),
    "VoteResponse": _refuse(5, "c"),
    "VoteResponse-pre-vote": _refuse(5, "c", pre_vote=True),
    "Heartbeat": Heartbeat(5, "c", 1),
    "HeartbeatResponse": HeartbeatResponse(5, "c", False, 1),
    "TimeoutNow": TimeoutNow(5, "c"),
}


def _higher_term_expect(start: str, kind: str, peers: tuple[NodeId, ...]) -> tuple[Expect, Role, int]:
    had_leader = start in ("follower-with-leader", "leader")
    forgot = (LeaderChanged(5, None),) if had_leader else ()
    match kind:
        case "RequestVote-transfer":
            forgot = (LeaderChanged(3, None),) if had_leader else ()
            return Expect(HardState(3, "c"), (("c", _grant(3)),), forgot, REDRAW), Role.FOLLOWER, 3
        case "Heartbeat":
            ack = (("c", HeartbeatResponse(5, "a", True, 1)),)
            return Expect(HardState(5, None), ack, (LeaderChanged(5, "c"),), REDRAW), Role.FOLLOWER, 5
        case "TimeoutNow":
            events = (LeaderChanged(6, None),) if had_leader else ()
            sends = requests(6, "a", peers, transfer=True)
            return Expect(HardState(6, "a"), sends, events, REDRAW), Role.CANDIDATE, 6
        case _:
            return Expect(HardState(5, None), (), forgot, LATER), Role.FOLLOWER, 5


@pytest.mark.parametrize("kind", list(_HIGHER))
@pytest.mark.parametrize("start", list(_STARTS))
def test_a_higher_term_turns_any_role_into_a_follower(start: str, kind: str) -> None:
    """Paper 5.1: a server that sees a higher term adopts it and reverts to follower, for every message kind.

    (A ``TimeoutNow`` of a higher term also makes the target stand at once,
    thesis 3.10.)  The new term is persisted in the same ``Output``.
    """
    h = _STARTS[start]()
    expect, role, term = _higher_term_expect(start, kind, PEERS3)
    h.check(Step(_HIGHER[kind], 0.1), expect)
    assert h.core.role is role
    assert h.core.term == term
    assert not h.core.holds_lease(h.now)


# -------------------------------------------------------------- heartbeats

HEARTBEAT_ROWS = [
    Row(
        "first-heartbeat-adopts-term-and-leader",
        lambda: idle_follower(),
        Step(Heartbeat(1, "b", 1)),
        Expect(
            persist=HardState(1, None),
            sends=(("b", HeartbeatResponse(1, "a", True, 1)),),
            events=(LeaderChanged(1, "b"),),
            deadline=REDRAW,
        ),
        role=Role.FOLLOWER,
        term=1,
        leader_id="b",
    ),
    Row(
        "next-heartbeat-of-the-same-leader-resets-the-timer",
        lambda: follower_of("b", 1),
        Step(Heartbeat(1, "b", 2), HB),
        Expect(sends=(("b", HeartbeatResponse(1, "a", True, 2)),), deadline=REDRAW),
        term=1,
    ),
    Row(
        "stale-heartbeat-refused-with-the-newer-term-timer-kept",
        lambda: follower_of("c", 2),
        Step(Heartbeat(1, "b", 5), HB),
        Expect(sends=(("b", HeartbeatResponse(2, "a", False, 5)),), deadline=KEEP),
        role=Role.FOLLOWER,
        term=2,
    ),
    Row(
        "stale-heartbeat-to-a-candidate-timer-kept",
        lambda: candidate(term=2),
        Step(Heartbeat(1, "b", 3)),
        Expect(sends=(("b", HeartbeatResponse(2, "a", False, 3)),), deadline=KEEP),
        role=Role.CANDIDATE,
        term=2,
    ),
    Row(
        "candidate-follows-the-winner-of-its-term",
        lambda: candidate(term=1),
        Step(Heartbeat(1, "b", 1)),
        Expect(
            sends=(("b", HeartbeatResponse(1, "a", True, 1)),),
            events=(LeaderChanged(1, "b"),),
            deadline=REDRAW,
        ),
        role=Role.FOLLOWER,
        term=1,
        leader_id="b",
    ),
    Row(
        "pre-candidate-follows-a-leader-of-its-term",
        lambda: pre_candidate(term=1),
        Step(Heartbeat(1, "b", 4)),
        Expect(
            sends=(("b", HeartbeatResponse(1, "a", True, 4)),),
            events=(LeaderChanged(1, "b"),),
            deadline=REDRAW,
        ),
        role=Role.FOLLOWER,
        term=1,
        leader_id="b",
    ),
    Row(
        "voter-follows-the-leader-of-its-term-and-keeps-its-vote",
        lambda: idle_follower(term=2, voted_for="c"),
        Step(Heartbeat(2, "b", 1)),
        Expect(
            sends=(("b", HeartbeatResponse(2, "a", True, 1)),),
            events=(LeaderChanged(2, "b"),),
            deadline=REDRAW,
        ),
        term=2,
        leader_id="b",
    ),
    Row(
        "leader-follows-a-leader-of-a-higher-term",
        lambda: leader(term=1),
        Step(Heartbeat(2, "b", 1), 0.1),
        Expect(
            persist=HardState(2, None),
            sends=(("b", HeartbeatResponse(2, "a", True, 1)),),
            events=(LeaderChanged(2, "b"),),
            deadline=REDRAW,
        ),
        role=Role.FOLLOWER,
        term=2,
        voted_for=None,
        leader_id="b",
    ),
]


@pytest.mark.parametrize("row", _params(HEARTBEAT_ROWS))
def test_heartbeat_handling(row: Row) -> None:
    """Paper 5.2 and 5.1: a heartbeat of the current or a newer term names the leader and resets the timer.

    A stale heartbeat is refused with the newer term so the old leader learns
    it, and it does NOT reset the timer (a deposed leader cannot hold the
    cluster back).
    """
    _run(row)


def test_heartbeats_keep_a_follower_from_standing() -> None:
    """Paper 5.2: a follower stays follower as long as it hears from a leader."""
    h = follower_of("b", 1)
    for seq in range(2, 60):
        out = h.step(Heartbeat(1, "b", seq), HB)
        assert out.sends == (("b", HeartbeatResponse(1, "a", True, seq)),)
        assert h.tick(0.0).sends == ()
    assert h.core.role is Role.FOLLOWER
    assert h.core.counters.pre_votes_started == 0


def test_stale_heartbeats_do_not_postpone_the_election() -> None:
    """Paper 5.1: stale heartbeats never reset the timer, so the node still stands on time."""
    h = follower_of("c", 2)
    deadline = h.core.next_deadline
    while h.now + HB < deadline:
        h.step(Heartbeat(1, "b", 1), HB)
    out = h.tick()
    assert h.now == deadline
    assert out.sends == requests(3, "a", PEERS3, pre_vote=True)


# ------------------------------------------------------ heartbeat responses


def test_heartbeat_responses() -> None:
    """Thesis 6.2 and 6.4: the leader counts acknowledgements of the rounds it sent, per follower.

    An acknowledgement changes no output (the next round comes on the
    heartbeat timer); a refusal or an answer of another term does not count;
    an answer for a round never sent is bad input.
    """
    h = leader()
    t0 = h.now
    h.check(Step(HeartbeatResponse(1, "b", True, 1), 0.1), Expect(deadline=KEEP))
    assert h.core.last_ack_at("b") == t0 + 0.1
    assert h.core.last_ack_at("c") is None
    h.check(Step(HeartbeatResponse(1, "c", False, 1), 0.1), Expect(deadline=KEEP))
    assert h.core.last_ack_at("c") is None

    h = leader(term=2)
    h.check(Step(HeartbeatResponse(1, "b", True, 1), 0.1), Expect(deadline=KEEP))
    assert h.core.last_ack_at("b") is None
    assert not h.core.holds_lease(h.now)


def test_heartbeat_response_with_a_higher_term_deposes_a_stale_leader() -> None:
    """Paper 5.1: a stale leader learns the newer term from the answer to its heartbeat, and steps down."""
    h = leader()
    h.step(HeartbeatResponse(1, "b", True, 1), 0.1)
    assert h.core.holds_lease(h.now)
    h.check(
        Step(HeartbeatResponse(3, "c", False, 1), 0.1),
        Expect(persist=HardState(3, None), events=(LeaderChanged(3, None),), deadline=REDRAW),
    )
    assert h.core.role is Role.FOLLOWER
    assert not h.core.holds_lease(h.now)
    assert h.core.lease_expires_at == float("-inf")


# ------------------------------------------------------------ check-quorum


def test_check_quorum_leader_steps_down_without_acknowledgements() -> None:
    """Thesis 6.2: a leader that has not heard from a quorum within ``T`` steps down at a heartbeat tick.

    Until then it keeps sending rounds every ``heartbeat_interval``; at the
    first tick once ``T`` has passed it becomes a follower of the same term
    and emits ``LeaderChanged(term, None)``.
    """
    h = leader()
    t0 = h.now
    seq = 1
    while True:
        before = h.now
        h.tick()
        assert h.now == before + HB
        if h.now - t0 >= T:
            break
        seq += 1
        assert h.outputs[-1].sends == heartbeats(1, "a", seq, PEERS3)
        assert h.outputs[-1].next_deadline == h.now + HB
    out = h.outputs[-1]
    assert out.persist is None
    assert out.sends == ()
    assert out.events == (LeaderChanged(1, None),)
    assert h.core.role is Role.FOLLOWER
    assert h.core.term == 1
    assert h.core.leader_id is None
    assert h.core.counters.check_quorum_step_downs == 1
    assert out.next_deadline > h.now


def test_check_quorum_counts_only_acknowledgements_within_T() -> None:
    """Thesis 6.2: acknowledgements older than ``T`` no longer count."""
    h = leader()
    t0 = h.now
    h.step(HeartbeatResponse(1, "b", True, 1), 0.1)
    while h.now + HB - t0 < 1.1:
        h.tick()
        assert h.core.role is Role.LEADER, "one recent ack of three nodes is a quorum"
    h.tick()
    assert h.now - (t0 + 0.1) >= T
    assert h.core.role is Role.FOLLOWER
    assert h.outputs[-1].events == (LeaderChanged(1, None),)


def test_check_quorum_keeps_a_leader_with_a_quorum() -> None:
    """Thesis 6.2: a leader acknowledged by a quorum every round stays leader."""
    h = leader(peers=PEERS5)
    for _ in range(40):
        out = h.tick()
        seq = out.sends[0][1].seq  # type: ignore[union-attr]
        h.step(HeartbeatResponse(1, "c", True, seq), 0.01)
        h.step(HeartbeatResponse(1, "e", True, seq), 0.01)
    assert h.core.role is Role.LEADER
    assert h.core.holds_lease(h.now)


def test_without_check_quorum_a_leader_stays_leader() -> None:
    """Thesis 6.2 is optional: with ``check_quorum=False`` a silent cluster does not depose the leader."""
    h = leader(check_quorum=False)
    for _ in range(40):
        h.tick()
    assert h.core.role is Role.LEADER
    assert h.outputs[-1].events == ()


# ------------------------------------------------------------------- lease


def test_lease_needs_a_quorum_of_acknowledgements_and_runs_from_the_send_time() -> None:
    """Thesis 6.4.1: the lease runs from the send time of the round a quorum acknowledged, for ``lease_duration``."""
    h = leader()
    t0 = h.now
    assert not h.core.holds_lease(t0), "no lease before a quorum acknowledged a round"
    assert h.core.lease_expires_at == float("-inf")
    h.step(HeartbeatResponse(1, "b", True, 1), 0.6)  # late ack of round 1, sent at t0
    assert h.core.lease_expires_at == t0 + LEASE
    assert h.core.holds_lease(t0 + LEASE - 0.001)
    assert not h.core.holds_lease(t0 + LEASE)
    # Round 2 is sent at t0 + HB; its acknowledgement moves the lease to t0 + HB + LEASE.
    h2 = leader()
    h2.tick()
    h2.step(HeartbeatResponse(1, "c", True, 1), 0.05)
    assert h2.core.lease_expires_at == t0 + LEASE
    h2.step(HeartbeatResponse(1, "c", True, 2), 0.05)
    assert h2.core.lease_expires_at == t0 + HB + LEASE


def test_lease_needs_a_quorum_in_a_five_node_cluster() -> None:
    """Thesis 6.4.1: one acknowledgement of four peers is not a quorum; two are."""
    h = leader(peers=PEERS5)
    t0 = h.now
    h.step(HeartbeatResponse(1, "b", True, 1), 0.1)
    h.step(HeartbeatResponse(1, "b", True, 1), 0.1)
    assert not h.core.holds_lease(h.now), "a duplicate acknowledgement counts once"
    h.step(HeartbeatResponse(1, "d", True, 1), 0.1)
    assert h.core.holds_lease(h.now)
    assert h.core.lease_expires_at == t0 + LEASE


def test_single_node_leader_holds_the_lease_at_once() -> None:
    """Thesis 6.4.1: in a cluster of one, the leader alone is the quorum."""
    h = leader(peers=())
    assert h.outputs[-1].sends == ()
    assert h.core.holds_lease(h.now)
    assert h.core.lease_expires_at == h.now + LEASE


def test_lease_is_given_up_at_once_on_timeout_now() -> None:
    """Thesis 3.10 and 6.4.1: the leader gives its lease up when it sends ``TimeoutNow``, for the rest of its term."""
    h = leader()
    h.step(HeartbeatResponse(1, "b", True, 1), 0.1)
    assert h.core.holds_lease(h.now)
    h.check(Transfer("b"), Expect(sends=(("b", TimeoutNow(1, "a")),), deadline=KEEP))
    assert not h.core.holds_lease(h.now)
    assert h.core.lease_expires_at == float("-inf")
    h.tick()
    h.step(HeartbeatResponse(1, "b", True, 2), 0.01)
    h.step(HeartbeatResponse(1, "c", True, 2), 0.01)
    assert h.core.role is Role.LEADER
    assert not h.core.holds_lease(h.now), "no new lease in this term"


def test_lease_is_gone_on_step_down() -> None:
    """Thesis 6.4.1: only a leader holds a lease; stepping down ends it."""
    for msg in (Heartbeat(2, "c", 1), RequestVote(2, "b", transfer=True), HeartbeatResponse(2, "b", False, 1)):
        h = leader()
        h.step(HeartbeatResponse(1, "b", True, 1), 0.1)
        assert h.core.holds_lease(h.now)
        h.step(msg, 0.1)
        assert h.core.role is not Role.LEADER
        assert not h.core.holds_lease(h.now)
        assert h.core.lease_expires_at == float("-inf")


def test_no_lease_for_non_leaders() -> None:
    """Thesis 6.4.1: followers and candidates never hold a lease."""
    for h in (fresh(), follower_of("b", 1), pre_candidate(), candidate()):
        assert not h.core.holds_lease(h.now)
        assert h.core.lease_expires_at == float("-inf")


# ---------------------------------------------------------------- transfer

TIMEOUT_NOW_ROWS = [
    Row(
        "target-stands-at-once-with-transfer-skipping-pre-vote",
        lambda: follower_of("b", 1),
        Step(TimeoutNow(1, "b"), 0.1),
        Expect(
            persist=HardState(2, "a"),
            sends=requests(2, "a", PEERS3, transfer=True),
            events=(LeaderChanged(2, None),),
            deadline=REDRAW,
        ),
        role=Role.CANDIDATE,
        term=2,
        voted_for="a",
        leader_id=None,
    ),
    Row(
        "idle-follower-stands-at-once",
        lambda: idle_follower(term=1),
        Step(TimeoutNow(1, "b")),
        Expect(persist=HardState(2, "a"), sends=requests(2, "a", PEERS3, transfer=True), deadline=REDRAW),
        role=Role.CANDIDATE,
        term=2,
        voted_for="a",
    ),
    Row(
        "stale-timeout-now-is-ignored",
        lambda: follower_of("c", 3),
        Step(TimeoutNow(2, "b"), 0.1),
        Expect(deadline=KEEP),
        role=Role.FOLLOWER,
        term=3,
    ),
    Row(
        "timeout-now-from-someone-else-than-the-leader-of-the-term-is-dropped",
        lambda: follower_of("b", 1),
        Step(TimeoutNow(1, "c"), 0.1),
        Expect(deadline=KEEP),
        role=Role.FOLLOWER,
        term=1,
    ),
    Row(
        "timeout-now-below-min-nodes-does-not-start-an-election",
        lambda: follower_of("b", 1, min_nodes=4),
        Step(TimeoutNow(1, "b"), 0.1),
        Expect(deadline=KEEP),
        role=Role.FOLLOWER,
        term=1,
    ),
]


@pytest.mark.parametrize("row", _params(TIMEOUT_NOW_ROWS))
def test_timeout_now(row: Row) -> None:
    """Thesis 3.10: on ``TimeoutNow`` the target stands at once, with ``transfer=True`` and no pre-vote.

    A ``TimeoutNow`` of an older term is ignored.
    """
    h = _run(row)
    if row.role is Role.CANDIDATE:
        assert not h.core.in_pre_vote


def test_transfer_without_target_picks_the_most_recent_acknowledger() -> None:
    """Thesis 3.10: the leader hands over to the peer that acknowledged most recently."""
    h = leader()
    h.step(HeartbeatResponse(1, "c", True, 1), 0.1)
    h.step(HeartbeatResponse(1, "b", True, 1), 0.1)
    h.check(Transfer(None), Expect(sends=(("b", TimeoutNow(1, "a")),), deadline=KEEP))
    assert h.core.counters.transfers_started == 1


def test_transfer_completes_despite_stickiness() -> None:
    """Thesis 3.10: a transfer elects the target in the next term at once, though every voter is sticky.

    Three cores pumped by hand: the followers heard the leader moments ago,
    yet grant the target's ``transfer=True`` request; the old leader steps
    down and never held its lease after sending ``TimeoutNow``.
    """
    pump = Pump.build(("a", "b", "c"))
    pump.run(until=5.0)
    ((old, term),) = pump.leaders().items()
    target = next(i for i in pump.members if i != old)
    out = pump.call(old, lambda core, now: core.transfer_leadership(target, now))
    assert out.sends == ((target, TimeoutNow(term, old)),)
    assert not pump.members[old].core.holds_lease(pump.now)
    started = pump.now
    pump.run(until=started + 0.001)  # messages arrive at once; no timer fires in a millisecond
    assert pump.leaders() == {target: term + 1}
    for h in pump.members.values():
        assert (h.core.term, h.core.leader_id) == (term + 1, target)
    assert pump.winners[term + 1] == {target}


NO_TRANSFER_ROWS = [
    Row("non-leader", lambda: follower_of("b", 1), Transfer("c"), Expect(deadline=KEEP)),
    Row("candidate", lambda: candidate(), Transfer("b"), Expect(deadline=KEEP)),
    Row("unknown-target", lambda: leader(), Transfer("zz"), Expect(deadline=KEEP), role=Role.LEADER),
    Row("self-as-target", lambda: leader(), Transfer("a"), Expect(deadline=KEEP), role=Role.LEADER),
    Row("no-peer-to-hand-over-to", lambda: leader(peers=()), Transfer(None), Expect(deadline=KEEP)),
]


@pytest.mark.parametrize("row", _params(NO_TRANSFER_ROWS))
def test_transfer_leadership_that_cannot_happen_changes_nothing(row: Row) -> None:
    """Specification (thesis 3.10): ``TransferLeadership`` on a non-leader, to an unknown id or to itself, changes nothing."""
    h = row.start()
    if h.core.role is Role.LEADER and h.core.peer_ids:
        h.step(HeartbeatResponse(1, "b", True, 1), 0.1)
    before = h.snapshot()
    h.check(row.input, row.expect)
    assert h.snapshot() == before


# ---------------------------------------------------------------- min/max


@pytest.mark.parametrize("pre_vote", [True, False], ids=["pre-vote", "no-pre-vote"])
def test_no_election_below_min_nodes(pre_vote: bool) -> None:
    """Specification (paper 5.2 quorum): no election starts while the cluster is smaller than ``min_nodes``."""
    h = fresh(peers=("b",), min_nodes=3, pre_vote=pre_vote)
    for _ in range(5):
        h.check(Tick(), Expect(deadline=REDRAW))
        assert h.core.role is Role.FOLLOWER
        assert h.core.term == 0
    out = h.feed(AddPeer("c"))
    assert out.sends == ()
    out = h.tick()
    assert out.sends == requests(1, "a", ("b", "c"), pre_vote=pre_vote)


@pytest.mark.parametrize(
    ("peers", "min_nodes", "quorum"),
    [(0, 1, 1), (1, 1, 2), (2, 1, 2), (3, 1, 3), (4, 1, 3), (2, 5, 3), (4, 5, 3), (2, 7, 4), (6, 3, 4)],
    ids=lambda v: str(v),
)
def test_quorum_is_a_majority_of_max_size_min_nodes(peers: int, min_nodes: int, quorum: int) -> None:
    """Specification: a quorum is a strict majority of ``max(cluster size, min_nodes)``."""
    h = fresh(peers=[f"p{i}" for i in range(peers)], min_nodes=min_nodes)
    assert h.core.cluster_size == peers + 1
    assert h.core.quorum == quorum


def test_lease_quorum_counts_min_nodes_after_a_removal() -> None:
    """Specification: after removals below ``min_nodes``, quorums still count ``min_nodes``."""
    h = leader(peers=PEERS5, min_nodes=5)
    h.feed(RemovePeer("d"))
    h.feed(RemovePeer("e"))
    assert h.core.cluster_size == 3
    assert h.core.quorum == 3
    h.step(HeartbeatResponse(1, "b", True, 1), 0.1)
    assert not h.core.holds_lease(h.now), "2 of max(3, 5) is no quorum"
    h.step(HeartbeatResponse(1, "c", True, 1), 0.1)
    assert h.core.holds_lease(h.now)


def test_max_nodes() -> None:
    """Specification: the cluster (self included) never grows beyond ``max_nodes``."""
    h = fresh(max_nodes=3)
    h.check(AddPeer("d"), Expect(deadline=KEEP))
    assert h.core.peer_ids == PEERS3
    assert h.core.counters.messages_rejected == 1
    h.feed(RemovePeer("c"))
    h.feed(AddPeer("d"))
    assert h.core.peer_ids == ("b", "d")


# -------------------------------------------------------------- membership


def _acked_leader(*acked_by: NodeId) -> Harness:
    """A leader of term 1 whose first round was acknowledged by *acked_by*, in that order."""
    h = leader()
    for peer in acked_by:
        h.step(HeartbeatResponse(1, peer, True, 1), 0.1)
    return h


MEMBERSHIP_ROWS = [
    Row(
        "leader-heartbeats-a-new-peer-at-once",
        lambda: leader(),
        AddPeer("d", 0.1),
        Expect(sends=(("d", Heartbeat(1, "a", 1)),), deadline=KEEP),
        role=Role.LEADER,
    ),
    Row("follower-adds-a-peer", lambda: follower_of("b", 1), AddPeer("d", 0.1), Expect(deadline=KEEP)),
    Row("adding-a-known-peer-changes-nothing", lambda: leader(), AddPeer("b", 0.1), Expect(deadline=KEEP)),
    Row(
        "leader-removing-itself-hands-over-then-terminates",
        lambda: _acked_leader("c"),
        RemovePeer("a", 0.1),
        Expect(sends=(("c", TimeoutNow(1, "a")),), events=(LeaderChanged(1, None),), deadline=Deadline.NEVER),
        role=Role.TERMINATED,
        leader_id=None,
    ),
    Row(
        "follower-removing-itself-terminates",
        lambda: follower_of("b", 1),
        RemovePeer("a", 0.1),
        Expect(events=(LeaderChanged(1, None),), deadline=Deadline.NEVER),
        role=Role.TERMINATED,
        leader_id=None,
    ),
    Row(
        "follower-removing-its-leader-stands-at-once",
        lambda: follower_of("b", 1),
        RemovePeer("b", 0.1),
        Expect(sends=requests(2, "a", ("c",), pre_vote=True), events=(LeaderChanged(1, None),), deadline=REDRAW),
        role=Role.CANDIDATE,
        term=1,
        leader_id=None,
    ),
    Row(
        # Without pre-vote its own vote would be its first act, and stickiness
        # covers that vote too (thesis 6.4.1): it stands when the window ends
        # (heard at 1.5, T = 1.0), not after a fresh timeout.
        "follower-removing-its-leader-without-pre-vote-stands-when-stickiness-ends",
        lambda: follower_of("b", 1, pre_vote=False),
        RemovePeer("b", 0.1),
        Expect(events=(LeaderChanged(1, None),), deadline=1.5 + T),
        role=Role.FOLLOWER,
        term=1,
        voted_for=None,
        leader_id=None,
    ),
    Row(
        "follower-removing-another-peer-keeps-following",
        lambda: follower_of("b", 1),
        RemovePeer("c", 0.1),
        Expect(deadline=KEEP),
        role=Role.FOLLOWER,
    ),
    Row(
        "candidate-below-min-nodes-goes-back-to-follower",
        lambda: candidate(min_nodes=3),
        RemovePeer("c"),
        Expect(deadline=REDRAW),
        role=Role.FOLLOWER,
        term=1,
    ),
    Row(
        "pre-candidate-below-min-nodes-goes-back-to-follower",
        lambda: pre_candidate(min_nodes=3),
        RemovePeer("c"),
        Expect(deadline=REDRAW),
        role=Role.FOLLOWER,
        term=0,
    ),
]


@pytest.mark.parametrize("row", _params(MEMBERSHIP_ROWS))
def test_membership(row: Row) -> None:
    """Specification, membership (thesis 3.10, 4): ``add_peer``/``remove_peer`` change this node's view only.

    Removing itself from a leader sends ``TimeoutNow`` then terminates;
    removing the leader makes a follower stand at once; a candidate whose view
    drops below ``min_nodes`` goes back to follower.
    """
    h = _run(row)
    if row.role is Role.TERMINATED:
        for item in (Tick(5.0), Step(Heartbeat(9, "b", 1)), AddPeer("z"), Transfer("c")):
            h.check(item, Expect(deadline=Deadline.NEVER))
        assert h.core.role is Role.TERMINATED


def test_a_removal_can_complete_a_quorum() -> None:
    """Paper 5.2 with the specification's membership rules: after a removal the candidate counts against the smaller quorum."""
    h = candidate(peers=PEERS5)
    h.step(_grant(1, "b"))
    h.feed(RemovePeer("d"))
    assert h.core.role is Role.CANDIDATE
    h.check(
        RemovePeer("e"),
        Expect(sends=heartbeats(1, "a", 1, ("b", "c")), events=(LeaderChanged(1, "a"),), deadline=HEARTBEAT),
    )
    assert role(h) is Role.LEADER


# --------------------------------------------------------------- bad input

_BAD_STARTS: dict[str, Callable[[], Harness]] = {
    "fresh": lambda: fresh(),
    "follower": lambda: follower_of("b", 1),
    "pre-candidate": lambda: pre_candidate(term=1),
    "candidate": lambda: candidate(term=1),
    "leader": lambda: leader(term=1),
}


def _bad_messages(sender: NodeId) -> dict[str, Message]:
    return {
        "RequestVote": RequestVote(9, sender),
        "RequestVote-pre-vote": RequestVote(9, sender, pre_vote=True),
        "RequestVote-transfer": RequestVote(9, sender, transfer=True),
        "VoteResponse": VoteResponse(1, sender, True),
        "VoteResponse-pre-vote": VoteResponse(2, sender, True, pre_vote=True),
        "VoteResponse-higher": VoteResponse(9, sender, False),
        "Heartbeat": Heartbeat(9, sender, 1),
        "Heartbeat-same-term": Heartbeat(1, sender, 1),
        "HeartbeatResponse": HeartbeatResponse(1, sender, True, 1),
        "HeartbeatResponse-higher": HeartbeatResponse(9, sender, False, 1),
        "TimeoutNow": TimeoutNow(9, sender),
    }


@pytest.mark.parametrize("kind", list(_bad_messages("z")))
@pytest.mark.parametrize("sender", ["unknown", "self"])
@pytest.mark.parametrize("start", list(_BAD_STARTS))
def test_bad_input_is_dropped_and_counted(start: str, sender: str, kind: str) -> None:
    """Specification (bad input): a message from an unknown node or from this node itself is dropped and counted.

    It changes nothing: empty ``Output``, same deadline, same state.
    """
    h = _BAD_STARTS[start]()
    h.advance(0.1)
    message = _bad_messages("zz" if sender == "unknown" else "a")[kind]
    before = h.snapshot()
    rejected = h.core.counters.messages_rejected
    h.check(Step(message), Expect(deadline=KEEP))
    assert h.snapshot() == before
    assert h.core.counters.messages_rejected == rejected + 1


def _stepped_down_leader() -> Harness:
    """The leader of term 1, stepped down by check-quorum: it knows it led term 1."""
    h = leader()
    while h.core.role is Role.LEADER:
        h.tick()
    return h


def _timed_out_follower() -> Harness:
    """A follower of ``b`` in term 1 whose timer fired: it no longer follows ``b``, but knows ``b`` won term 1."""
    h = follower_of("b", 1)
    h.tick()
    return h


BAD_ROWS = [
    Row("ack-of-a-round-never-sent", lambda: leader(), Step(HeartbeatResponse(1, "b", True, 2), 0.1), Expect()),
    Row("rival-leader-in-a-led-term", lambda: follower_of("b", 1), Step(Heartbeat(1, "c", 1), 0.1), Expect()),
    Row("second-leader-in-the-leaders-own-term", lambda: leader(), Step(Heartbeat(1, "b", 1), 0.1), Expect()),
    Row("rival-of-a-stepped-down-leader", _stepped_down_leader, Step(Heartbeat(1, "b", 1), 0.1), Expect()),
    Row("rival-after-losing-the-leader", _timed_out_follower, Step(Heartbeat(1, "c", 1), 0.1), Expect()),
    Row("timeout-now-from-a-rival", _timed_out_follower, Step(TimeoutNow(1, "c"), 0.1), Expect()),
    Row("add-self", lambda: follower_of("b", 1), AddPeer("a"), Expect()),
    Row("remove-unknown", lambda: leader(), RemovePeer("zz"), Expect()),
    Row("timeout-now-from-a-non-leader", lambda: follower_of("b", 1), Step(TimeoutNow(1, "c"), 0.1), Expect()),
]


@pytest.mark.parametrize("row", _params(BAD_ROWS))
def test_nonsense_is_dropped_and_counted(row: Row) -> None:
    """Specification (bad input): impossible messages and control requests change nothing and are counted.

    Two leaders in one term cannot happen while the rules hold (paper 5.2),
    so a heartbeat claiming so is nonsense, also after this node lost touch
    with the leader it knew for that term (or stepped down from leading it).
    """
    h = row.start()
    before = h.snapshot()
    rejected = h.core.counters.messages_rejected
    h.check(row.input, row.expect)
    assert h.core.counters.messages_rejected == rejected + 1
    assert h.snapshot() == before


# ---------------------------------------------------------- LeaderChanged


def test_leader_changed_on_a_won_election_and_only_when_the_view_changes() -> None:
    """Specification (thesis 3.4): ``LeaderChanged`` when a new leader is known or none is known any more.

    Never for ``(t, None) -> (t + 1, None)``: raising the term to stand tells
    a user nothing new when no leader was known.
    """
    h = fresh()
    assert h.tick().events == ()  # (0, None) -> pre-vote, still (0, None)
    assert h.step(_grant(1, "b", pre_vote=True)).events == ()  # (0, None) -> (1, None)
    assert h.tick().events == ()  # lost round: (1, None) -> pre-vote, still (1, None)
    assert h.step(_grant(2, "c", pre_vote=True)).events == ()  # (1, None) -> (2, None)
    assert h.step(_grant(2, "b")).events == (LeaderChanged(2, "a"),)
    assert h.tick().events == ()  # a heartbeat round
    assert h.step(HeartbeatResponse(4, "b", False, 2), 0.01).events == (LeaderChanged(4, None),)
    assert h.step(VoteResponse(6, "c", False), 0.01).events == ()  # (4, None) -> (6, None)


def test_leader_changed_as_a_follower() -> None:
    """Specification (paper 5.2): a follower reports each new leader, and reports losing it, once."""
    h = follower_of("b", 1)
    assert h.outputs[-1].events == (LeaderChanged(1, "b"),)
    assert h.step(Heartbeat(1, "b", 2), HB).events == ()
    assert h.step(Heartbeat(2, "c", 1), HB).events == (LeaderChanged(2, "c"),)
    assert h.tick().events == (LeaderChanged(2, None),)  # timed out: no leader known any more
    assert h.step(_grant(3, "b", pre_vote=True)).events == ()  # (2, None) -> (3, None)
    assert h.step(Heartbeat(3, "c", 1)).events == (LeaderChanged(3, "c"),)
    assert h.step(RequestVote(4, "b", transfer=True), 0.01).events == (LeaderChanged(4, None),)


def test_leader_changed_is_never_emitted_for_a_term_change_without_a_leader() -> None:
    """Specification: ``(t, None) -> (t', None)`` is not news, however the term was learnt."""
    for msg in (
        RequestVote(3, "b"),
        VoteResponse(3, "b", False),
        VoteResponse(3, "b", False, pre_vote=True),
        HeartbeatResponse(3, "b", False),
    ):
        h = idle_follower(term=1)
        out = h.step(msg)
        assert h.core.term == 3
        assert out.events == ()
        assert out.persist is not None
        assert out.persist.term == 3


def test_election_config_is_the_one_given() -> None:
    """The harness builds cores with the test configuration (a guard for the tables above)."""
    cfg = make_config()
    e = Election(cfg, peers=PEERS3, hard_state=None, rng=random.Random(1), now=0.0)
    assert e.config is cfg
    assert e.peer_ids == PEERS3
    assert e.role is Role.FOLLOWER
    assert e.term == 0
