"""Elections back off under overload (issue 13, item 5; docs/specification.md, "Overload").

Two rules of the pure core, each a table of start state, input and the full
expected ``Output``:

* Backoff: a candidacy round lost to its election timer doubles the random
  part of the node's next timeouts (``T + (T_max - T) * factor * r``), up to
  ``BACKOFF_CAP``; hearing a leader or winning resets the factor.  Timers that
  are not a lost round (a quick pre-vote retry, a split vote left early, a
  postponed candidacy, a follower's own timeout) change nothing.
* Late timers: a timer that fires more than ``T / 2`` after its deadline is
  let go once: a follower re-arms instead of standing, a candidate steps back
  (same term, vote kept), a leader sends its round but skips that
  check-quorum test.  The next late firing in a row acts, so a process that
  always lags still elects.

Raft's randomized timeouts (paper 5.2) make split votes rare when timers fire
on time; both rules are about a process whose timers do not.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from almost_raft import Heartbeat, HeartbeatResponse, LeaderChanged, Role, VoteResponse
from almost_raft._core import BACKOFF_CAP

from .helpers import (
    PEERS3,
    T_MAX,
    Deadline,
    Expect,
    Harness,
    T,
    Tick,
    candidate,
    heartbeats,
    idle_follower,
    leader,
    pre_candidate,
    requests,
    role,
)

LATE = T / 2 + 0.125  # more than T / 2 after the deadline (exact in binary)


def _next_draw(h: Harness, factor: int, *, skip: int = 0) -> float:
    """The timeout *h*'s core will draw with the given backoff factor after *skip* draws (its rng is not consumed)."""
    twin = random.Random()
    twin.setstate(h.rng.getstate())
    for _ in range(skip):
        twin.random()
    return T + (T_MAX - T) * factor * twin.random()


def lost_rounds(n: int) -> Harness:
    """A node whose pre-vote rounds timed out *n* times in a row (nobody answered)."""
    h = pre_candidate(overload_backoff=True)
    for _ in range(n):
        h.tick()
    return h


# ------------------------------------------------------------------ backoff


@dataclass(frozen=True)
class Backoff:
    """A start state, the next timer firing, and the factor of the draw it must make."""

    id: str
    start: Callable[[], Harness]
    factor: int


BACKOFF_ROWS = [
    Backoff("a-first-round-lost-doubles-the-range", lambda: lost_rounds(0), 2),
    Backoff("a-second-doubles-it-again", lambda: lost_rounds(1), 4),
    Backoff("up-to-the-cap", lambda: lost_rounds(4), BACKOFF_CAP),
    Backoff("off-with-the-switch-off", lambda: pre_candidate(overload_backoff=False), 1),
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in BACKOFF_ROWS])
def test_a_round_lost_to_its_timer_widens_the_next_draws(row: Backoff) -> None:
    """Backoff: the next round's timeout is drawn from ``[T, T + (T_max - T) * factor]``."""
    h = row.start()
    expected = _next_draw(h, row.factor)
    out = h.tick()
    assert h.core.in_pre_vote, "it stands again: a new pre-vote round"
    assert out.sends == requests(1, "a", PEERS3, pre_vote=True)
    assert out.next_deadline == h.now + expected


def test_hearing_a_leader_resets_the_backoff() -> None:
    """Backoff: an accepted heartbeat means the cluster works again: draws are back to ``[T, T_max]``."""
    h = lost_rounds(3)
    # (Leaving the candidacy draws once, accepting the heartbeat again: the second one counts.)
    expected = _next_draw(h, 1, skip=1)
    out = h.step(Heartbeat(1, "b", 1), 0.01)
    assert h.core.role is Role.FOLLOWER
    assert out.next_deadline == h.now + expected


def test_winning_resets_the_backoff() -> None:
    """Backoff: a node that won and then steps down draws from ``[T, T_max]`` again."""
    h = lost_rounds(3)
    h.step(VoteResponse(1, "b", True, pre_vote=True), 0.01)
    h.step(VoteResponse(1, "b", True), 0.01)
    assert role(h) is Role.LEADER
    expected = _next_draw(h, 1, skip=1)
    out = h.step(Heartbeat(2, "c", 1), 0.01)  # a newer leader: it steps down, its timer drawn afresh
    assert role(h) is Role.FOLLOWER
    assert out.next_deadline == h.now + expected


def test_a_quick_pre_vote_retry_is_no_lost_round() -> None:
    """Backoff counts full timeouts only: the quick retry after sticky refusals (thesis 9.6) is not one."""
    h = pre_candidate(overload_backoff=True, min_nodes=3)
    h.step(VoteResponse(0, "b", False, pre_vote=True), 0.001)
    out = h.step(VoteResponse(0, "c", False, pre_vote=True), 0.001)
    assert out.next_deadline < h.now + T, "a quick retry is armed"
    expected = _next_draw(h, 1)
    out = h.tick()
    assert out.next_deadline == h.now + expected


def test_a_followers_own_timeout_is_no_lost_round() -> None:
    """Backoff: a follower whose timer fires stands with an ordinary draw."""
    h = idle_follower(overload_backoff=True)
    expected = _next_draw(h, 1)
    out = h.tick()
    assert h.core.in_pre_vote
    assert out.next_deadline == h.now + expected


# -------------------------------------------------------------- late timers


def _late(h: Harness) -> float:
    return h.core.next_deadline + LATE - h.now


@dataclass(frozen=True)
class Late:
    """A start state whose next timer fires *late*, the full expected ``Output``, and the role after."""

    id: str
    start: Callable[[], Harness]
    expect: Callable[[Harness], Expect]
    role: Role
    late: bool = True


def _follower_rearms(h: Harness) -> Expect:
    return Expect(deadline=h.core.next_deadline + LATE + _next_draw(h, 1))


def _stands(h: Harness) -> Expect:
    return Expect(sends=requests(1, "a", PEERS3, pre_vote=True), deadline=Deadline.LATER)


def _candidate_steps_back(h: Harness) -> Expect:
    return Expect(deadline=h.core.next_deadline + LATE + _next_draw(h, 1))


def _late_again(start: Callable[[], Harness]) -> Callable[[], Harness]:
    def build() -> Harness:
        h = start()
        h.tick(_late(h))
        return h

    return build


LATE_ROWS = [
    Late(
        "a-follower-timer-late-re-arms", lambda: idle_follower(overload_backoff=True), _follower_rearms, Role.FOLLOWER
    ),
    Late(
        "the-next-late-firing-in-a-row-stands",
        _late_again(lambda: idle_follower(overload_backoff=True)),
        _stands,
        Role.CANDIDATE,
    ),
    Late(
        "a-late-candidate-steps-back-keeping-its-vote",
        lambda: candidate(overload_backoff=True),
        _candidate_steps_back,
        Role.FOLLOWER,
    ),
    Late("off-with-the-switch-off", lambda: idle_follower(overload_backoff=False), _stands, Role.CANDIDATE),
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in LATE_ROWS])
def test_a_timer_more_than_T_over_2_late_is_let_go_once(row: Late) -> None:
    """Late timers: a stalled process does not stand on stale information; the second late firing acts."""
    h = row.start()
    voted = h.core.voted_for
    term = h.core.term
    h.check(Tick(_late(h)), row.expect(h))
    assert h.core.role is row.role
    assert (h.core.term, h.core.voted_for) == (term, voted)


def test_a_timer_exactly_T_over_2_late_still_stands() -> None:
    """Late timers: "more than ``T / 2``" is strict."""
    h = idle_follower(overload_backoff=True)
    h.check(Tick(h.core.next_deadline + T / 2 - h.now), _stands(h))


def test_an_on_time_firing_rearms_the_rule() -> None:
    """Late timers: only consecutive late firings act; an on-time one in between lets the next late one go again."""
    h = idle_follower(overload_backoff=True)
    h.tick(_late(h))  # let go
    h.step(Heartbeat(1, "b", 1), 0.001)  # back in touch
    h.tick()  # on time: stands
    assert h.core.in_pre_vote
    out = h.tick(_late(h))  # late again: let go again (steps back)
    assert out.sends == ()
    assert h.core.role is Role.FOLLOWER


def test_a_late_leader_sends_its_round_and_skips_check_quorum_once() -> None:
    """Late timers at a leader: its acknowledgements may be queued behind the stall; check next round."""
    h = leader(overload_backoff=True)
    since = h.now
    out = h.tick(since + 2 * T - h.now)  # due at since + HB; fires 2T later, no acknowledgement in sight
    assert out.sends == heartbeats(1, "a", 2, PEERS3)
    assert out.events == ()
    assert h.core.role is Role.LEADER
    assert h.core.counters.late_timers == 1
    # The next round is on time: check-quorum applies again, and nobody answered within T.
    out = h.tick()
    assert out.events == (LeaderChanged(1, None),)
    assert role(h) is Role.FOLLOWER


def test_a_late_leader_that_hears_its_quorum_stays() -> None:
    """Late timers at a leader: the acknowledgements that waited keep it in office at the next round."""
    h = leader(overload_backoff=True)
    h.tick(h.now + 2 * T - h.now)
    h.step(HeartbeatResponse(1, "b", True, 2), 0.001)
    h.tick()
    assert h.core.role is Role.LEADER
    assert h.outputs[-1].sends == heartbeats(1, "a", 3, PEERS3)


def test_with_the_switch_off_a_late_leader_steps_down_at_once() -> None:
    """Check-quorum as before (thesis 6.2): no quorum of acknowledgements within ``T``."""
    h = leader(overload_backoff=False)
    out = h.tick(2 * T)
    assert out.events == (LeaderChanged(1, None),)
    assert h.outputs[-1].persist is None


def test_late_rules_keep_hard_state_untouched() -> None:
    """Neither rule casts, counts or forgets a vote: nothing to persist, whatever fires late."""
    starts: tuple[Callable[[], Harness], ...] = (
        lambda: idle_follower(overload_backoff=True),
        lambda: candidate(overload_backoff=True),
    )
    for start in starts:
        h = start()
        out = h.tick(_late(h))
        assert out.persist is None
    h = idle_follower(term=3, voted_for="c", overload_backoff=True)
    before = h.core.voted_for
    h.tick(_late(h))
    assert (h.core.term, h.core.voted_for) == (3, before)
