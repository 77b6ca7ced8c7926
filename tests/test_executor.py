"""The ``Executor``: save, then send, then publish; nothing overtakes a save (sync, table-driven)."""

from __future__ import annotations

import pytest

from almost_raft import HardState, Heartbeat, LeaderChanged, RequestVote, VoteResponse
from almost_raft._core import Output
from almost_raft._executor import Executor
from almost_raft._messages import Message, NodeId


def out(
    persist: HardState | None = None, *sends: tuple[NodeId, Message], events: tuple[LeaderChanged, ...] = ()
) -> Output:
    return Output(persist=persist, sends=tuple(sends), events=events, next_deadline=1.0)


class Recorder:
    def __init__(self) -> None:
        self.log: list[object] = []
        self.executor = Executor(lambda to, m: self.log.append(("send", to, m)), lambda e: self.log.append(e))


HB = Heartbeat(1, "a", 1)
RV = RequestVote(2, "a")
VOTE = VoteResponse(3, "a", True)
WON = LeaderChanged(2, "a")

# (name, outputs submitted, saves completed after them, expected log, expected pending save)
CASES: list[tuple[str, list[Output], int, list[object], HardState | None]] = [
    ("nothing to save: carried out at once", [out(None, ("b", HB))], 0, [("send", "b", HB)], None),
    ("sends before events", [out(None, ("b", HB), events=(WON,))], 0, [("send", "b", HB), WON], None),
    ("a save holds its sends", [out(HardState(2, "a"), ("b", RV), ("c", RV))], 0, [], HardState(2, "a")),
    (
        "the save done: sends, then events",
        [out(HardState(2, "a"), ("b", RV), events=(WON,))],
        1,
        [("send", "b", RV), WON],
        None,
    ),
    (
        "what comes after a save waits behind it",
        [out(HardState(2, "a"), ("b", RV)), out(None, ("b", HB))],
        0,
        [],
        HardState(2, "a"),
    ),
    (
        "released in order once saved",
        [out(HardState(2, "a"), ("b", RV)), out(None, ("b", HB))],
        1,
        [("send", "b", RV), ("send", "b", HB)],
        None,
    ),
    (
        "two saves: the second waits for its own",
        [out(HardState(2, "a"), ("b", RV)), out(None, ("c", HB)), out(HardState(3, "c"), ("c", VOTE))],
        1,
        [("send", "b", RV), ("send", "c", HB)],
        HardState(3, "c"),
    ),
    (
        "two saves, both done",
        [out(HardState(2, "a"), ("b", RV)), out(HardState(3, "c"), ("c", VOTE))],
        2,
        [("send", "b", RV), ("send", "c", VOTE)],
        None,
    ),
]


@pytest.mark.parametrize(("name", "outputs", "saves", "expected", "pending"), CASES, ids=[c[0] for c in CASES])
def test_order(name: str, outputs: list[Output], saves: int, expected: list[object], pending: HardState | None) -> None:
    r = Recorder()
    for o in outputs:
        r.executor.submit(o)
    for _ in range(saves):
        r.executor.saved()
    assert r.log == expected
    assert r.executor.pending_save == pending


def test_saved_without_a_pending_save_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="no save pending"):
        Recorder().executor.saved()


def test_discard_drops_what_waits_unsent() -> None:
    r = Recorder()
    r.executor.submit(out(HardState(2, "a"), ("b", RV)))
    r.executor.submit(out(None, ("b", HB)))
    assert r.executor.discard() == 2
    assert r.log == []
    assert r.executor.pending_save is None
    r.executor.submit(out(None, ("b", HB)))
    assert r.log == [("send", "b", HB)]
