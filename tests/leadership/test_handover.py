"""Graceful hand-over (cancel, failure, ``RemoveNode(self)``, closed ``control``), crash failover, pausing candidacy.

A leader that goes away on purpose sends ``TimeoutNow`` first, so a new leader
is known to all after a few one-way latencies instead of an election timeout.
On trio (virtual time) the tests measure both, with ``T = 150 ms`` and 1 ms
latency; on asyncio they check only the outcome.  ``pytest -s`` prints the
numbers.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from almost_raft import ControlMessage, LeaderChanged, Message, RaftElectionState, Role, raft_election
from almost_raft._messages import NodeId
from almost_raft.testing import LocalCluster
from almost_raft.transports.memory import MemoryNetwork

T = 0.150
HEARTBEAT = 0.050
MESSAGE_TIMEOUT = 0.050
LATENCY = 0.001
OPTIONS: dict[str, Any] = {
    "election_timeout": T,
    "heartbeat_interval": HEARTBEAT,
    "message_timeout": MESSAGE_TIMEOUT,
}
HANDOVER_BOUND = 0.010  # TimeoutNow, RequestVote, VoteResponse, Heartbeat: four latencies, far below T


def trials(backend: str) -> range:
    return range(10 if backend == "trio" else 2)


def report(what: str, backend: str, times: Sequence[float]) -> None:
    ms = sorted(1000 * t for t in times)
    print(
        f"\n[{backend}] {what} over {len(ms)} seeds: min {ms[0]:.1f} ms, median {statistics.median(ms):.1f} ms, "
        f"max {ms[-1]:.1f} ms (T = {1000 * T:.0f} ms, latency {1000 * LATENCY:.0f} ms)"
    )


@asynccontextmanager
async def running_cluster(seed: int, nodes: int = 3) -> AsyncIterator[LocalCluster]:
    """A running ``LocalCluster``; its ``control`` streams are closed at the end."""
    cluster = LocalCluster(nodes, seed=seed, latency=LATENCY, **OPTIONS)
    try:
        async with cluster:
            yield cluster
    finally:
        # LocalCluster leaves them open: a ResourceWarning, an error here.
        for control in cluster.controls.values():
            control.close()


class AppCrashed(Exception):
    """Raised by a task beside ``raft_election``: its task group cancels the election."""


class HandBuilt:
    """Three nodes over a ``MemoryNetwork``, each election in a cancel scope of its own.

    ``LocalCluster.crash`` takes a node off the network before cancelling it,
    which is a crash; here a node can be cancelled (or have a task beside its
    election fail) while its network still works, as in a rolling restart.
    """

    ids: tuple[NodeId, ...] = ("a", "b", "c")

    def __init__(self, seed: int) -> None:
        self.network = MemoryNetwork(LATENCY)
        self.states: dict[NodeId, RaftElectionState] = {}
        self.scopes = {node_id: anyio.CancelScope() for node_id in self.ids}
        self.crash_app = {node_id: anyio.Event() for node_id in self.ids}
        self.errors: dict[NodeId, Exception] = {}
        self._changed: anyio.Event | None = None
        self._controls: list[MemoryObjectSendStream[ControlMessage | Message]] = []
        for node_id in self.ids:
            peers = [self.network.node(p, sender_id=node_id) for p in self.ids if p != node_id]
            state, control = RaftElectionState.init(
                node_id, nodes=peers, min_nodes=3, rng=random.Random(f"{seed}/{node_id}"), **OPTIONS
            )
            self.network.register(node_id, control)
            self.states[node_id] = state
            self._controls.append(control)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HandBuilt]:
        try:
            async with anyio.create_task_group() as tg:
                for node_id in self.ids:
                    tg.start_soon(self._watch, self.states[node_id])
                    await tg.start(self._run, node_id)
                yield self
                tg.cancel_scope.cancel()
        finally:
            for control in self._controls:
                control.close()

    async def _run(self, node_id: NodeId, *, task_status: TaskStatus[None]) -> None:
        with self.scopes[node_id]:
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(raft_election, self.states[node_id])
                    task_status.started()
                    await self.crash_app[node_id].wait()
                    raise AppCrashed(node_id)
            except Exception as exc:  # AppCrashed, in an exception group
                self.errors[node_id] = exc
        self._notify()

    async def _watch(self, state: RaftElectionState) -> None:
        with state.subscribe() as events:
            async for _ in events:
                self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def agreed_leader(self, among: Sequence[NodeId]) -> LeaderChanged | None:
        views = {(self.states[n].term, self.states[n].leader_id) for n in among}
        if len(views) != 1:
            return None
        ((term, leader),) = views
        if leader is None or leader not in among or self.states[leader].role is not Role.LEADER:
            return None
        return LeaderChanged(term, leader)

    async def wait_for_leader(self, among: Sequence[NodeId] | None = None, *, after_term: int = -1) -> LeaderChanged:
        ids = self.ids if among is None else among
        while (agreed := self.agreed_leader(ids)) is None or agreed.term <= after_term:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        return agreed


# ------------------------------------------------------------------ hand-over


@pytest.mark.parametrize("how", ["cancelled", "sibling_failed"])
async def test_a_cancelled_or_failing_leader_hands_over_at_once(anyio_backend_name: str, how: str) -> None:
    took: list[float] = []
    for seed in trials(anyio_backend_name):
        nodes = HandBuilt(seed)
        async with nodes.running():
            with anyio.fail_after(5):
                leader = await nodes.wait_for_leader()
            await anyio.sleep(random.Random(seed).uniform(0, HEARTBEAT))
            old = leader.leader_id
            assert old is not None
            others = [n for n in nodes.ids if n != old]
            started = anyio.current_time()
            if how == "cancelled":
                nodes.scopes[old].cancel()
            else:
                nodes.crash_app[old].set()
            with anyio.fail_after(5):
                new = await nodes.wait_for_leader(others, after_term=leader.term)
            took.append(anyio.current_time() - started)
            assert nodes.states[old].role is Role.TERMINATED
            assert nodes.states[old].status().transfers_started == 1
            if how == "sibling_failed":
                assert "AppCrashed" in repr(nodes.errors[old])
            # A transfer round: the target stood at once in the next term, without pre-vote.
            assert new.term == leader.term + 1
    report(f"hand-over after the leader's election was {how}", anyio_backend_name, took)
    if anyio_backend_name == "trio":
        assert max(took) < HANDOVER_BOUND


@pytest.mark.parametrize("how", ["stop", "close_control"])
async def test_stopping_the_leader_or_closing_its_control_hands_over_at_once(anyio_backend_name: str, how: str) -> None:
    took: list[float] = []
    for seed in trials(anyio_backend_name):
        async with running_cluster(seed) as cluster:
            with anyio.fail_after(5):
                leader = await cluster.wait_for_leader()
            await anyio.sleep(random.Random(seed).uniform(0, HEARTBEAT))
            old = leader.leader_id
            assert old is not None
            others = [n for n in cluster.ids if n != old]
            started = anyio.current_time()
            with anyio.fail_after(5):
                if how == "stop":
                    await cluster.stop(old)  # RemoveNode(self)
                else:
                    await cluster.controls[old].aclose()
                new = await cluster.wait_for_leader(others, after_term=leader.term)
                while old in cluster.running:
                    await cluster.wait_changed()
            took.append(anyio.current_time() - started)
            assert new.term == leader.term + 1
            assert cluster.states[old].role is Role.TERMINATED
    report(f"hand-over by {how}", anyio_backend_name, took)
    if anyio_backend_name == "trio":
        assert max(took) < HANDOVER_BOUND


async def test_a_crash_does_not_hand_over_so_failover_waits_for_the_election_timeout(anyio_backend_name: str) -> None:
    took: list[float] = []
    for seed in trials(anyio_backend_name):
        async with running_cluster(seed) as cluster:
            with anyio.fail_after(5):
                leader = await cluster.wait_for_leader()
            await anyio.sleep(random.Random(seed).uniform(0, HEARTBEAT))
            old = leader.leader_id
            assert old is not None
            others = [n for n in cluster.ids if n != old]
            crashed_at = anyio.current_time()
            ages = [cluster.states[n].status().leader_contact_age for n in others]
            await cluster.crash(old)  # off the network first: its TimeoutNow is lost
            with anyio.fail_after(5):
                await cluster.wait_for_leader(others, after_term=leader.term)
            took.append(anyio.current_time() - crashed_at)
            if anyio_backend_name == "trio":
                assert all(age is not None for age in ages)
                last_contact = max(crashed_at - age for age in ages if age is not None)
                # No voter grants a vote, and no candidate stands, within T of the last heartbeat.
                assert anyio.current_time() - last_contact >= T
    report("failover after a crash (no hand-over)", anyio_backend_name, took)
    if anyio_backend_name == "trio":
        assert min(took) >= T - HEARTBEAT
        assert min(took) > 10 * HANDOVER_BOUND


# ---------------------------------------------------------------- candidacy


async def test_a_paused_node_never_leads_but_still_votes(anyio_backend_name: str) -> None:
    rounds = 10 if anyio_backend_name == "trio" else 3
    wins: list[LeaderChanged] = []
    async with running_cluster(seed=21) as cluster, anyio.create_task_group() as tg:
        paused = cluster.ids[0]
        state = cluster.states[paused]
        state.pause_candidacy()  # no one can win before T: right after start it is in time

        async def watch() -> None:
            with state.subscribe() as events:
                async for event in events:
                    if event.leader_id == paused:
                        wins.append(event)

        tg.start_soon(watch)
        term = -1
        for _ in range(rounds):
            with anyio.fail_after(5):
                leader = await cluster.wait_for_leader(after_term=term)
            assert leader.leader_id != paused
            assert leader.leader_id is not None
            # Crash the leader: of the two left, only the paused node could
            # compete, and the other one needs its vote (quorum 2 of 3).
            other = next(n for n in cluster.ids if n not in (paused, leader.leader_id))
            votes_before = state.status().votes_granted
            await cluster.crash(leader.leader_id)
            with anyio.fail_after(5):
                new = await cluster.wait_for_leader([paused, other], after_term=leader.term)
            assert new.leader_id == other
            assert state.status().votes_granted > votes_before
            cluster.controls[leader.leader_id].close()
            await cluster.start(leader.leader_id)
            term = new.term - 1
        status = state.status()
        tg.cancel_scope.cancel()
    assert wins == []
    assert status.candidacy_paused
    assert (status.elections_started, status.pre_votes_started, status.elections_won) == (0, 0, 0)
    assert status.role is Role.FOLLOWER


async def test_pausing_the_leader_hands_over_and_resuming_lets_it_stand_again(anyio_backend_name: str) -> None:
    async with running_cluster(seed=23) as cluster:
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
        first = leader.leader_id
        assert first is not None
        paused_at = anyio.current_time()
        cluster.states[first].pause_candidacy()
        with anyio.fail_after(5):
            second = await cluster.wait_for_leader(after_term=leader.term)
        took = anyio.current_time() - paused_at
        print(f"\n[{anyio_backend_name}] hand-over by pause_candidacy: {1000 * took:.1f} ms")
        if anyio_backend_name == "trio":
            assert took < HANDOVER_BOUND
        assert second.leader_id not in (None, first)
        status = cluster.states[first].status()
        assert status.candidacy_paused
        assert status.role is Role.FOLLOWER
        # Pause the third node too, then resume the first: once the second
        # leader crashes, the first is the only node that may stand.
        third = next(n for n in cluster.ids if n not in (first, second.leader_id))
        cluster.states[third].pause_candidacy()
        cluster.states[first].resume_candidacy()
        await anyio.wait_all_tasks_blocked()
        assert not cluster.states[first].status().candidacy_paused
        assert cluster.states[third].status().candidacy_paused
        assert second.leader_id is not None
        await cluster.crash(second.leader_id)
        with anyio.fail_after(5):
            third_leader = await cluster.wait_for_leader([first, third], after_term=second.term)
        assert third_leader.leader_id == first


async def test_a_node_paused_before_its_election_starts_stands_only_once_resumed(anyio_backend_name: str) -> None:
    state, control = RaftElectionState.init("solo", **OPTIONS)  # alone, min_nodes=1: it would win after T
    state.pause_candidacy()
    with control:
        async with anyio.create_task_group() as tg:
            await tg.start(raft_election, state)
            assert state.status().candidacy_paused
            await anyio.sleep(4 * T)  # several election timeouts: it never stands
            status = state.status()
            assert (status.role, status.pre_votes_started, status.elections_started) == (Role.FOLLOWER, 0, 0)
            resumed_at = anyio.current_time()
            state.resume_candidacy()
            with anyio.fail_after(5):
                while not state.holds_lease:
                    await state.wait_changed()
            if anyio_backend_name == "trio":
                assert anyio.current_time() - resumed_at < 2 * T
            assert not state.status().candidacy_paused
            tg.cancel_scope.cancel()
