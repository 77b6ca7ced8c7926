"""A planned handover retries with the next-best peer instead of falling back to an election (issue 13, item 3).

Thesis 3.10: the leader sends ``TimeoutNow`` and its target stands at once;
the target's vote request reaches the old leader one round trip after
``TimeoutNow`` left, and ends its leadership.  If that has not happened
within ``TRANSFER_RETRY_ROUND_TRIPS`` heartbeat round trips (at least
``T / 50``), the target is taken for gone and ``TimeoutNow`` goes to the
next-best peer: the one that acknowledged most recently among those heard
within ``T`` and not tried yet.  Each row is a scenario and what must hold
after it; the lease stays given up throughout, and the transfer deadline
set by the first request stands (tests/core/test_fixes.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from almost_raft import HeartbeatResponse, LeaderChanged, RequestVote, Role, TimeoutNow, VoteResponse
from almost_raft._core import TRANSFER_RETRY_ROUND_TRIPS

from .helpers import PEERS5, Disconnect, Harness, T, Transfer, leader

RTT = 0.03  # c's acknowledgement of round 1 comes 30 ms after the round left: the slowest round trip


def acknowledged() -> Harness:
    """A leader of b..e in term 1; round 1 was acknowledged by b after 10 ms and by c after 30 ms (d, e silent)."""
    h = leader("a", PEERS5)
    h.step(HeartbeatResponse(1, "b", True, 1), 0.01)
    h.step(HeartbeatResponse(1, "c", True, 1), RTT - 0.01)
    return h


def _timeouts(h: Harness) -> list[object]:
    return [to for to, m in h.outputs[-1].sends if isinstance(m, TimeoutNow)]


def handing_to_b() -> tuple[Harness, float]:
    """The leader is asked to hand over to b; returns when it asked."""
    h = acknowledged()
    out = h.feed(Transfer("b", 0.01))
    assert out.sends == (("b", TimeoutNow(1, "a")),)
    assert not h.core.holds_lease(h.now), "the lease is given up with the first TimeoutNow"
    return h, h.now


def silent_target() -> tuple[Harness, float]:
    """b never stands: time runs on to the retry."""
    h, asked = handing_to_b()
    retry_at = asked + TRANSFER_RETRY_ROUND_TRIPS * RTT
    assert h.core.next_deadline == retry_at, "a few heartbeat round trips after asking"
    h.tick()
    return h, asked


def _expect_handed_to_c(h: Harness, asked: float) -> None:
    assert _timeouts(h) == ["c"], "the next-best peer: c acknowledged most recently of the rest"
    assert h.core.role is Role.LEADER
    assert not h.core.holds_lease(h.now)
    assert h.core.counters.transfer_retries == 1


def both_silent() -> tuple[Harness, float]:
    """Neither b nor c stands: d and e were never heard, so nobody is left to try."""
    h, asked = silent_target()
    h.wait(T / 2)
    return h, asked


def _expect_no_retry_to_peers_not_heard(h: Harness, asked: float) -> None:
    sent = [to for out in h.outputs for to, m in out.sends if isinstance(m, TimeoutNow)]
    assert sent == ["b", "c"]
    assert h.core.role is Role.LEADER


def _expect_steps_down_at_the_first_deadline(h: Harness, asked: float) -> None:
    while h.core.role is Role.LEADER:
        h.tick()
    assert h.now == pytest.approx(asked + T, abs=1e-9), "exactly T after the first request, whatever the retries"
    downs = [o for o in h.outputs if o.events == (LeaderChanged(1, None),)]
    assert len(downs) == 1
    assert h.core.counters.step_downs == 1


def target_stands() -> tuple[Harness, float]:
    """b stands before the retry is due: its vote request (transfer) reaches the old leader."""
    h, asked = handing_to_b()
    h.step(RequestVote(2, "b", transfer=True), RTT)
    return h, asked


def _expect_no_retry(h: Harness, asked: float) -> None:
    assert h.outputs[-1].sends == (("b", VoteResponse(2, "a", True)),)
    assert h.core.role is Role.FOLLOWER
    assert h.core.term == 2
    h.wait(T)
    assert [to for out in h.outputs for to, m in out.sends if isinstance(m, TimeoutNow)] == ["b"]
    assert h.core.counters.transfer_retries == 0


def target_disconnects() -> tuple[Harness, float]:
    """The transport reports b's connection closed before the retry is due: no need to wait."""
    h, asked = handing_to_b()
    h.feed(Disconnect("b", 0.001))
    return h, asked


def acked_again() -> tuple[Harness, float]:
    """Acknowledgements keep coming during the transfer: the lease stays given up."""
    h, asked = silent_target()
    h.tick()  # the next heartbeat round (seq 2)
    for peer in ("b", "c", "d"):
        h.step(HeartbeatResponse(1, peer, True, 2), 0.001)
    return h, asked


def _expect_no_lease(h: Harness, asked: float) -> None:
    assert h.core.role is Role.LEADER
    assert not h.core.holds_lease(h.now)
    assert h.core.lease_expires_at == float("-inf")


@dataclass(frozen=True)
class Row:
    """A scenario (returning the harness and when the transfer was asked for) and what must hold after it."""

    id: str
    scenario: Callable[[], tuple[Harness, float]]
    expect: Callable[[Harness, float], None]


ROWS = [
    Row("a-silent-target-is-replaced-by-the-next-best-peer", silent_target, _expect_handed_to_c),
    Row("no-retry-to-a-peer-not-heard-within-T", both_silent, _expect_no_retry_to_peers_not_heard),
    Row("the-first-transfer-deadline-stands", both_silent, _expect_steps_down_at_the_first_deadline),
    Row("a-target-that-stands-ends-it-without-a-retry", target_stands, _expect_no_retry),
    Row("a-disconnected-target-is-replaced-at-once", target_disconnects, _expect_handed_to_c),
    Row("the-lease-stays-given-up", acked_again, _expect_no_lease),
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in ROWS])
def test_a_transfer_that_does_not_complete_is_retried(row: Row) -> None:
    """Thesis 3.10, with a retry: the handover completes by TimeoutNow unless no peer answers."""
    h, asked = row.scenario()
    row.expect(h, asked)


def test_the_retry_waits_at_least_T_over_50() -> None:
    """With round trips too short to measure, the retry still waits ``T / 50``."""
    h = leader("a", PEERS5)
    h.step(HeartbeatResponse(1, "b", True, 1))
    h.step(HeartbeatResponse(1, "c", True, 1))
    h.feed(Transfer("b"))
    assert h.core.next_deadline == h.now + T / 50


def test_a_transfer_right_after_winning_goes_to_a_voter_and_retries_to_none() -> None:
    """Before any acknowledgement: the target is a voter (the first); nobody was heard, so no retry."""
    h = leader("a", PEERS5)
    out = h.feed(Transfer(None))
    assert out.sends == (("b", TimeoutNow(1, "a")),)
    h.wait(T / 2)
    sent = [to for o in h.outputs for to, m in o.sends if isinstance(m, TimeoutNow)]
    assert sent == ["b"]
