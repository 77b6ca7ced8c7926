"""A pre-vote refused by still-sticky voters is retried after one round trip, not a full timeout.

Thesis 9.6 (pre-vote) and 4.2.3 (leader stickiness): the first follower to
time out may find its peers still inside their stickiness window, because they
heard the last heartbeat a little later than it did.  The refusal changes
nothing; the node asks again once the window has surely passed, at most three
times per campaign.
"""

from __future__ import annotations

import random

from almost_raft import Heartbeat, RequestVote, Role, VoteResponse
from almost_raft._core import Election, Output
from almost_raft._messages import Message, NodeId

from .helpers import T, make_config

IDS = ("a", "b", "c", "L")  # L leads term 1, then dies


def _node(self_id: str, *, seed: int = 1) -> Election:
    peers = tuple(n for n in IDS if n != self_id)
    return Election(make_config(self_id, min_nodes=4), peers=peers, hard_state=None, rng=random.Random(seed), now=0.0)


def _pre_votes(out: Output) -> list[object]:
    return [m for _, m in out.sends if isinstance(m, RequestVote) and m.pre_vote]


def test_refused_pre_vote_is_asked_again_one_round_trip_later() -> None:
    a = _node("a")
    a.step(Heartbeat(1, "L", 1), 0.0)
    fire = a.next_deadline
    out = a.tick(fire)
    assert a.in_pre_vote
    assert len(_pre_votes(out)) == 3
    assert out.next_deadline >= fire + T
    # b and c heard the heartbeat later: still sticky, they refuse with their (equal) term.
    a.step(VoteResponse(1, "b", False, pre_vote=True), fire + 0.002)
    out = a.step(VoteResponse(1, "c", False, pre_vote=True), fire + 0.004)
    # Two refusals of four members: a quorum of three is out of reach.  The
    # round took 4 ms, so the node asks again after that long, but not sooner
    # than T / 100 (10 ms here).
    assert out.sends == ()
    assert out.next_deadline == (fire + 0.004) + max(0.004, T / 100)
    out = a.tick(out.next_deadline)
    assert len(_pre_votes(out)) == 3
    assert a.term == 1
    assert a.role is Role.CANDIDATE
    assert out.persist is None


def test_quick_retries_are_bounded_per_campaign() -> None:
    a = _node("a", seed=5)
    now = a.next_deadline
    a.tick(now)
    gaps = []
    for _ in range(4):
        a.step(VoteResponse(0, "b", False, pre_vote=True), now + 0.001)
        out = a.step(VoteResponse(0, "c", False, pre_vote=True), now + 0.002)
        gaps.append(out.next_deadline - now)
        now = out.next_deadline
        a.tick(now)
    assert [gap < T for gap in gaps] == [True, True, True, False]


def test_a_refusal_naming_a_higher_term_is_no_quick_retry() -> None:
    a = _node("a", seed=5)
    a.tick(a.next_deadline)
    now = a.next_deadline - 1.0
    out = a.step(VoteResponse(4, "b", False, pre_vote=True), now)
    assert a.role is Role.FOLLOWER
    assert a.term == 4
    assert out.persist is not None
    assert out.persist.term == 4
    assert out.next_deadline >= now + T


def test_three_cores_elect_without_a_second_full_timeout() -> None:
    """b and c stay sticky 5 ms past a's timeout; with 1 ms delays a wins without a second full timeout.

    (b and c hold a's pre-vote until their windows end, docs/specification.md
    "Held pre-votes"; with voters that refused instead, the quick retries
    above would do it.)
    """
    cores = {n: _node(n, seed=i) for i, n in enumerate(IDS[:3])}
    a = cores["a"]
    a.step(Heartbeat(1, "L", 1), 0.0)
    fire = a.next_deadline
    for n in ("b", "c"):
        cores[n].step(Heartbeat(1, "L", 1), fire - T + 0.005)
    now = fire
    pending = list(a.tick(now).sends)
    while a.role is not Role.LEADER and now < fire + 0.1:
        if not pending:
            # Nothing in flight: the next timer of any of the three fires.
            now = min(core.next_deadline for core in cores.values())
            pending = [sent for core in cores.values() if core.next_deadline <= now for sent in core.tick(now).sends]
            continue
        now += 0.001
        replies: list[tuple[NodeId, Message]] = []
        for dst, msg in pending:
            if dst in cores:
                replies.extend(cores[str(dst)].step(msg, now).sends)
        for n in ("b", "c"):
            if cores[n].next_deadline <= now:
                replies.extend(cores[n].tick(now).sends)
        pending = replies
    assert a.role is Role.LEADER
    assert a.term == 2
    assert now < fire + 0.05, f"took {now - fire:.3f} s after the first timeout"
