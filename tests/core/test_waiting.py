"""A node that cannot stand because its view is below ``min_nodes`` says so (issue 11, item 4).

docs/specification.md ("Membership"): no node starts a round below ``min_nodes``.  The
node logs at INFO "node %r term %d: waiting for %d members, have %d" when it
first finds itself unable, then again at most every 30 seconds of its own
clock while it lasts, and at once when it is unable again after it could
stand.
"""

from __future__ import annotations

import logging

import pytest

from almost_raft import Heartbeat

from .helpers import AddPeer, Harness, RemovePeer, follower_of, fresh


def _waiting(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    for r in caplog.records:
        if "waiting for" in r.getMessage():
            assert r.levelno == logging.INFO
            assert r.name == "almost_raft"
    caplog.clear()
    return lines


def _ticks_until(h: Harness, t: float) -> None:
    while h.core.next_deadline <= t:
        h.tick()


def test_waiting_is_logged_first_then_at_a_low_rate(caplog: pytest.LogCaptureFixture) -> None:
    """Once at the first timeout, not at every one after it, again 30 s later by the node's own clock."""
    h = fresh(peers=("b",), min_nodes=3)
    with caplog.at_level(logging.INFO, logger="almost_raft"):
        h.tick()
        first = h.now
        assert _waiting(caplog) == ["node 'a' term 0: waiting for 3 members, have 2"]
        _ticks_until(h, first + 29.9)
        assert _waiting(caplog) == [], "at most once per 30 s"
        _ticks_until(h, first + 32.0)
        assert _waiting(caplog) == ["node 'a' term 0: waiting for 3 members, have 2"]


def test_waiting_is_logged_again_at_once_after_the_node_could_stand(caplog: pytest.LogCaptureFixture) -> None:
    """A node that stood since is unable anew: it says so at once."""
    h = fresh(peers=("b",), min_nodes=3)
    with caplog.at_level(logging.INFO, logger="almost_raft"):
        h.tick()
        assert len(_waiting(caplog)) == 1
        h.feed(AddPeer("c"))
        h.tick()  # it stands: asks for pre-votes
        assert h.core.in_pre_vote
        h.feed(RemovePeer("c", 0.1))  # a candidate below min_nodes goes back to follower
        assert _waiting(caplog) == ["node 'a' term 0: waiting for 3 members, have 2"]


def test_a_follower_whose_leader_leaves_below_min_nodes_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """Removing the leader would make the follower stand at once, but the view is too small."""
    h = follower_of("b", 1, min_nodes=3)
    with caplog.at_level(logging.INFO, logger="almost_raft"):
        h.feed(RemovePeer("b", 0.1))
        assert _waiting(caplog) == ["node 'a' term 1: waiting for 3 members, have 2"]


def test_no_waiting_line_while_a_leader_is_heard(caplog: pytest.LogCaptureFixture) -> None:
    """A follower that hears its leader has no reason to stand, so nothing to say."""
    h = fresh(peers=("b",), min_nodes=3)
    with caplog.at_level(logging.INFO, logger="almost_raft"):
        for seq in range(1, 20):
            h.step(Heartbeat(1, "b", seq), 0.25)
            h.tick(0.0)
        assert _waiting(caplog) == []
