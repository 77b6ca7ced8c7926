"""Input raced against the election's timers, in real time, on both backends: nothing leaves before its save.

What virtual time cannot show, real time can.  These tests run many short
trials of the production code (``raft_election``, and the ``ElectionHost``)
with storages and peers that yield at random, sometimes through a worker
thread, and with input aimed at the instants where timers fire (see
``races.py``).  From the order in which saves became durable and messages
left the node, they check Raft's rule of persistence (paper, Figure 2: state
"updated on stable storage before responding to RPCs"): every vote request
and every granted vote after the save it depends on, every term after its
save, the node ending on what its storage holds, and a node restarted from
its storage never voting twice in a term.

The trio runs here use the real clock (no ``MockClock``): the races are the
subject.  ``ALMOST_RAFT_RACE_TRIALS`` sets the number of trials per test.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from almost_raft import HardState, RaftElectionState, RequestVote, VoteResponse
from almost_raft.host import ElectionHost

from .helpers import running_host
from .races import T, Trial, check, restarted_votes_twice, run_trial

TRIALS = int(os.environ.get("ALMOST_RAFT_RACE_TRIALS", "120"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends in real time: trio without its virtual clock."""
    return str(request.param)


def _config(trial: Trial) -> object:
    state, control = RaftElectionState.init(
        "a", nodes=[], election_timeout=T, heartbeat_interval=T / 4, min_nodes=3, pre_vote=trial.pre_vote
    )
    control.close()
    return state.config


async def _run_trials(host: ElectionHost | None) -> list[Trial]:
    trials: list[Trial] = []
    problems: list[str] = []
    for seed in range(TRIALS):
        trial = await run_trial(seed, host=host)
        trials.append(trial)
        problems.extend(f"seed {seed}: {problem}" for problem in check(trial))
        if restarted_votes_twice(trial, _config(trial)):
            problems.append(f"seed {seed}: restarted from {trial.stored}, it votes for another candidate")
    assert not problems, "\n".join(problems[:20])
    return trials


def _assert_raced(trials: list[Trial]) -> None:
    """The trials did what they are for: saves under way, votes, requests, crashes."""

    def share(predicate: Callable[[Trial], bool]) -> float:
        return sum(1 for t in trials if predicate(t)) / len(trials)

    def sent(trial: Trial, kind: type[object], granted: bool | None = None) -> bool:
        return any(
            entry[0] == "send"
            and isinstance(entry[2], kind)
            and (granted is None or getattr(entry[2], "granted", None) is granted)
            for entry in trial.log
        )

    assert share(lambda t: sum(1 for e in t.log if e[0] == "save") >= 2) > 0.4
    assert share(lambda t: sent(t, RequestVote)) > 0.8
    assert share(lambda t: sent(t, VoteResponse, granted=True)) > 0.2
    assert share(lambda t: t.incarnations > 1) > 0.2
    assert share(lambda t: t.final is not None and t.final.term >= 2) > 0.4


async def test_nothing_leaves_before_its_save() -> None:
    _assert_raced(await _run_trials(None))


async def test_nothing_leaves_before_its_save_in_a_host() -> None:
    async with running_host() as host:
        _assert_raced(await _run_trials(host))


def test_the_check_sees_a_send_before_its_save() -> None:
    """The check can fail: a vote sent before its save, and a storage behind the node, are caught."""
    trial = Trial(seed=0, pre_vote=False)
    trial.log = [
        ("send", "b", VoteResponse(3, "a", True)),
        ("save", None, HardState(3, "b")),
        ("send", "c", RequestVote(4, "a")),
    ]
    trial.final = HardState(4, "a")
    trial.stored = HardState(3, "b")
    problems = check(trial)
    assert any("vote for 'b' in term 3 sent before it was saved" in p for p in problems)
    assert any("RequestVote for term 4" in p for p in problems)
    assert any("storage holds" in p for p in problems)
