"""An event loop under load: CPU-bound callbacks that hog the loop must not cause elections.

These tests run on real time on both backends (trio without ``MockClock``:
a hog blocks real time, which a virtual clock would not see).  A hog task
keeps the loop busy for a few milliseconds at a time, leaving it free only
as long again, so the elections get half of the loop at most.  With the
default timing (``T`` = 150 ms, ``h`` = 50 ms) the largest stall tolerated is
close to ``T - h`` = 100 ms (``benchmarks/loop_stall.py`` measures it), so
stalls of 5 ms sit far inside the tolerance even on a busy 2-core machine.

The control: without the overload rule, a single stall longer than ``T_max``
does make the leader step down (check-quorum), so the counters the other tests
watch do see a disturbance when there is one.  With it (the default), the same
stall of the whole process is let go: every timer fires more than ``T / 2``
late, so each node takes the stall for its own and waits one more round
(docs/specification.md, "Overload").
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio
import pytest

from almost_raft import RaftElectionState, Role
from almost_raft._messages import NodeId
from almost_raft.host import ElectionHost
from almost_raft.testing import LocalCluster
from almost_raft.transports.memory import MemoryNetwork

T = 0.150
H = 0.050
HOG = 0.005  # seconds the loop is blocked at a time
LOAD_FOR = 1.5  # seconds of load per test


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends on real time: a blocked loop must be felt by the clock."""
    return str(request.param)


def spin(seconds: float) -> None:
    """Keep the CPU (and so the event loop) busy for *seconds*: a CPU-bound callback."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def hog(seconds: float, stall: float, gap: float) -> tuple[int, float]:
    """Block the loop for *stall* every *gap* for *seconds*; return (stalls, share of the time blocked)."""
    stalls = 0
    start = anyio.current_time()
    end = start + seconds
    while anyio.current_time() < end:
        spin(stall)
        stalls += 1
        await anyio.sleep(gap)
    return stalls, stalls * stall / (anyio.current_time() - start)


def disturbances(states: Sequence[RaftElectionState]) -> tuple[int, int, set[tuple[int, NodeId | None]]]:
    """(elections started, leaders stepped down, distinct (term, leader) views) over *states*."""
    started = sum(s.status().elections_started for s in states)
    step_downs = sum(s.status().step_downs for s in states)
    views = {(s.term, s.leader_id) for s in states}
    return started, step_downs, views


@asynccontextmanager
async def hosted_cluster(n: int, seed: int, *, overload_backoff: bool = True) -> AsyncIterator[list[RaftElectionState]]:
    """*n* nodes run by one ``ElectionHost``, registered with it on a ``MemoryNetwork``: messages skip ``control``."""
    network = MemoryNetwork()
    host = ElectionHost()
    ids = [f"d{i}" for i in range(n)]
    states: list[RaftElectionState] = []
    controls = []
    for node_id in ids:
        peers = [network.node(p, sender_id=node_id) for p in ids if p != node_id]
        state, control = RaftElectionState.init(
            node_id,
            election_timeout=T,
            heartbeat_interval=H,
            nodes=peers,
            min_nodes=n,
            rng=random.Random(f"{seed}/{node_id}"),
            overload_backoff=overload_backoff,
        )
        network.register(node_id, control, host=host, state=state)
        states.append(state)
        controls.append(control)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(host.run)
            for state in states:
                await tg.start(host.run_election, state)
            yield states
            tg.cancel_scope.cancel()
    finally:
        for control in controls:
            control.close()


async def wait_any_change(states: Sequence[RaftElectionState]) -> None:
    """Wait until the role, term, leader or lease of any of *states* changes."""

    async def wait_one(state: RaftElectionState, scope: anyio.CancelScope) -> None:
        await state.wait_changed()
        scope.cancel()

    async with anyio.create_task_group() as tg:
        for state in states:
            tg.start_soon(wait_one, state, tg.cancel_scope)


async def wait_until(states: Sequence[RaftElectionState], condition: Callable[[], bool]) -> None:
    """Wait until *condition* holds, checking it at every change of *states* (bound it with fail_after)."""
    while not condition():
        await wait_any_change(states)


def agreed(states: Sequence[RaftElectionState]) -> tuple[int, NodeId | None] | None:
    """(term, leader) when exactly one node leads and every node follows it."""
    leaders = [s for s in states if s.role is Role.LEADER]
    if len(leaders) == 1 and all(s.leader_id == leaders[0].self_id and s.term == leaders[0].term for s in states):
        return leaders[0].term, leaders[0].self_id
    return None


async def wait_agreed(states: Sequence[RaftElectionState]) -> tuple[int, NodeId | None]:
    """Wait until exactly one node leads and every node follows it; return (term, leader)."""
    await wait_until(states, lambda: agreed(states) is not None)
    view = agreed(states)
    assert view is not None
    return view


async def check_steady_under_load(states: Sequence[RaftElectionState]) -> None:
    with anyio.fail_after(5):
        first = await wait_agreed(states)
    leader = next(s for s in states if s.self_id == first[1])
    with anyio.fail_after(5):
        await wait_until(states, lambda: leader.holds_lease)
    started, step_downs, _ = disturbances(states)
    sent_before = leader.status().messages_sent
    stalls, blocked = await hog(LOAD_FOR, HOG, HOG)

    started_after, step_downs_after, views = disturbances(states)
    # The load was real: many stalls, blocking the loop a good part of the time.
    assert stalls >= 50, stalls
    assert blocked >= 0.25, blocked
    # ... and the election never noticed it.
    assert started_after == started, "an election started under load"
    assert step_downs_after == step_downs, "the leader stepped down under load"
    assert views == {first}
    assert leader.role is Role.LEADER
    assert leader.holds_lease
    # Heartbeats kept going out: at least half of the rounds of the window, to each follower.
    rounds = LOAD_FOR / H
    assert leader.status().messages_sent - sent_before >= (len(states) - 1) * rounds / 2


async def test_local_cluster_steady_under_a_hogged_loop() -> None:
    """Through ``control`` (``LocalCluster``): 5 ms CPU-bound stalls, half the loop, no election."""
    async with LocalCluster(3, seed=7, election_timeout=T, heartbeat_interval=H) as cluster:
        await check_steady_under_load([cluster.states[n] for n in cluster.ids])


async def test_hosted_steady_under_a_hogged_loop() -> None:
    """Through an ``ElectionHost`` and the in-memory fast path: the same load, no election."""
    async with hosted_cluster(3, seed=7) as states:
        await check_steady_under_load(states)


async def test_a_stall_of_the_whole_process_is_let_go() -> None:
    """Overload: one stall of the whole process past ``T_max`` disturbs nothing; every late timer is let go once."""
    async with hosted_cluster(3, seed=8) as states:
        with anyio.fail_after(5):
            await wait_agreed(states)
        before = disturbances(states)
        agreed = [(s.term, s.leader_id) for s in states]
        spin(2 * T + 0.1)
        # Two full rounds of the default timing after the stall: time for anything it caused to show.
        await anyio.sleep(2 * 2 * T)
        assert disturbances(states)[:2] == before[:2]
        assert [(s.term, s.leader_id) for s in states] == agreed
        assert sum(s.status().late_timers for s in states) >= 1


async def test_a_stall_longer_than_the_timeout_is_noticed() -> None:
    """The control: without the overload rule, one stall past ``T_max`` makes the leader step down, and the cluster elects again."""
    async with hosted_cluster(3, seed=8, overload_backoff=False) as states:
        with anyio.fail_after(5):
            await wait_agreed(states)
        started, step_downs, _ = disturbances(states)
        spin(2 * T + 0.1)  # past the longest election timeout and check-quorum's window

        def disturbed() -> bool:
            started_after, step_downs_after, _ = disturbances(states)
            return started_after > started or step_downs_after > step_downs

        with anyio.fail_after(5):
            await wait_until(states, disturbed)
            await wait_agreed(states)
        assert disturbed()
