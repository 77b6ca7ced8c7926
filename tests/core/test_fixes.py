"""Fixes of issue 10, item 5, on the pure core: each row fails on the core before the fix.

Each row is a start state, a script of inputs, and what must hold after it,
with the rule it checks:

* A candidate's quick pre-vote retries belong to its candidacy (thesis 9.6
  with 4.2.3, ``_check_pre_vote_refused``): stepping down drops them, so the
  next campaign gets its own three.
* ``TransferLeadership`` asked again and again does not keep a leader that
  gave its lease up in office (thesis 3.10: the old leader steps down when the
  transfer does not complete within ``T``): the first deadline stands.
* With pre-vote off, a candidate refused by a quorum waits for its election
  timeout before it raises its term again (paper 5.2; etcd raft's
  ``TestLeaderElectionInOneRoundRPC``: a candidate refused by a majority stays
  in its term).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from almost_raft import Heartbeat, HeartbeatResponse, LeaderChanged, RequestVote, Role, TimeoutNow, VoteResponse

from .helpers import HB, PEERS5, Harness, T, Transfer, candidate, fresh, leader, role

L_PEERS = ("b", "c", "L")  # L leads term 1; a, b and c follow it


def _pre_votes(h: Harness) -> int:
    return sum(1 for _, m in h.outputs[-1].sends if isinstance(m, RequestVote) and m.pre_vote)


def _refused_by_sticky_voters(h: Harness) -> float:
    """b and c refuse the pending pre-vote round at a's own term, 2 ms later; return the deadline it set."""
    h.step(VoteResponse(h.core.term, "b", False, pre_vote=True), 0.001)
    out = h.step(VoteResponse(h.core.term, "c", False, pre_vote=True), 0.001)
    return out.next_deadline


def quick_retries_are_dropped_while_one_is_armed() -> tuple[Harness, float]:
    """The third quick retry is armed when L is heard again: stepping down must disarm it too."""
    h = fresh("a", L_PEERS, min_nodes=4)
    h.step(Heartbeat(1, "L", 1), 0.5)
    h.tick()
    for _ in range(2):
        _refused_by_sticky_voters(h)
        h.tick()
    _refused_by_sticky_voters(h)  # the third quick retry, armed
    h.step(Heartbeat(1, "L", 2), 0.001)
    h.tick()  # a full timeout after the heartbeat: a new campaign
    assert h.core.in_pre_vote
    return h, h.now


def _expect_quick_retry(h: Harness, start: float) -> None:
    deadline = _refused_by_sticky_voters(h)
    assert deadline == h.now + max(h.now - start, T / 100), "the new campaign retries after one round trip"


def transfer_asked_again_and_again() -> tuple[Harness, float]:
    """A leader without check-quorum asked to hand over every 0.75 T to a target that never stands."""
    h = leader(check_quorum=False)
    h.step(HeartbeatResponse(1, "b", True, 1), 0.1)
    out = h.feed(Transfer("c", 0.1))
    first = h.now
    assert out.sends == (("c", TimeoutNow(1, "a")),)
    while h.core.role is Role.LEADER and h.now < first + 3 * T:
        h.wait(0.75 * T)
        if h.core.role is Role.LEADER:
            h.feed(Transfer("c"))
    return h, first


def _expect_stepped_down_at_the_first_deadline(h: Harness, first: float) -> None:
    assert h.core.role is Role.FOLLOWER
    steps = [o for o in h.outputs if o.events == (LeaderChanged(1, None),)]
    assert len(steps) == 1
    assert h.now < first + T + 0.75 * T, "stepped down T after the first request"
    assert not h.core.holds_lease(h.now)


def refused_by_a_quorum_without_pre_vote() -> tuple[Harness, float]:
    """Paper 5.2 without pre-vote: both peers refuse the vote of term 1."""
    h = candidate(pre_vote=False)
    timer = h.core.next_deadline  # drawn when it stood in term 1
    h.step(VoteResponse(1, "b", False), 0.01)
    h.step(VoteResponse(1, "c", False), 0.01)
    return h, timer


def answered_by_a_quorum_without_winning_without_pre_vote() -> tuple[Harness, float]:
    """Five nodes, no pre-vote: one grant and one refusal make a quorum of answers, no win."""
    h = candidate(peers=PEERS5, pre_vote=False)
    timer = h.core.next_deadline
    h.step(VoteResponse(1, "b", True), 0.01)
    h.step(VoteResponse(1, "c", False), 0.01)
    return h, timer


def _expect_same_term_until_the_timer(h: Harness, timer: float) -> None:
    assert h.core.role is Role.CANDIDATE
    assert h.core.term == 1
    assert h.outputs[-1].persist is None
    assert h.outputs[-1].sends == ()
    assert h.core.next_deadline == timer, "it waits for its own election timeout"
    h.tick()
    assert h.now == timer
    assert h.core.term == 2, "and only then stands in the next term"


@dataclass(frozen=True)
class Row:
    """A scenario (returning the harness and a time it refers to) and what must hold after it."""

    id: str
    rule: str
    scenario: Callable[[], tuple[Harness, float]]
    expect: Callable[[Harness, float], None]


ROWS = [
    Row("armed-quick-retry-dropped-on-step-down", "thesis 9.6 + 4.2.3", quick_retries_are_dropped_while_one_is_armed, _expect_quick_retry),
    Row("first-transfer-deadline-stands", "thesis 3.10", transfer_asked_again_and_again, _expect_stepped_down_at_the_first_deadline),
    Row("refused-by-a-quorum-without-pre-vote", "paper 5.2", refused_by_a_quorum_without_pre_vote, _expect_same_term_until_the_timer),
    Row("answered-without-a-win-without-pre-vote", "paper 5.2", answered_by_a_quorum_without_winning_without_pre_vote, _expect_same_term_until_the_timer),
]  # fmt: skip


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in ROWS])
def test_fix(row: Row) -> None:
    """Each fix of issue 10 item 5, with the rule it restores (see the module docstring)."""
    h, at = row.scenario()
    row.expect(h, at)


def test_with_pre_vote_the_split_vote_rule_still_stands_again_at_once() -> None:
    """The split-vote fast path stays, through a pre-vote round: no term is raised before the pre-votes."""
    h = candidate()
    h.step(VoteResponse(1, "b", False), 0.01)
    out = h.step(VoteResponse(1, "c", False), 0.01)
    assert h.core.in_pre_vote
    assert h.core.term == 1
    assert out.persist is None
    assert [m for _, m in out.sends] == [RequestVote(2, "a", pre_vote=True)] * 2


def test_heartbeats_do_not_move_the_transfer_deadline() -> None:
    """Thesis 3.10: heartbeat rounds during a transfer leave its deadline alone."""
    h = leader(check_quorum=False)
    h.feed(Transfer("b", 0.1))
    deadline = h.now + T
    h.wait(T - HB / 2)
    assert h.core.role is Role.LEADER
    h.wait(HB)
    assert role(h) is Role.FOLLOWER
    assert h.now >= deadline
