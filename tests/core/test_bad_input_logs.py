"""A flood of bad input is counted whole but logged sparingly: the first ten, then one in a thousand."""

from __future__ import annotations

import logging

import pytest

from almost_raft import Heartbeat
from almost_raft._core import worth_logging

from .helpers import fresh


def test_a_flood_of_frames_from_a_stranger_is_counted_but_barely_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "almost_raft")
    h = fresh()
    for seq in range(1, 2501):
        h.core.step(Heartbeat(1, "stranger", seq), 0.0)
    assert h.core.counters.messages_rejected == 2500
    lines = [r.getMessage() for r in caplog.records if r.name == "almost_raft"]
    assert len(lines) == 12  # the first ten, the 1000th and the 2000th
    assert lines[-1].endswith("(2000 dropped)")


@pytest.mark.parametrize(("count", "logged"), [(1, True), (10, True), (11, False), (999, False), (1000, True)])
def test_which_drops_are_logged(count: int, logged: bool) -> None:
    assert worth_logging(count) is logged
