"""``ElectionHost``: many elections stepped by one task, on both backends, under the safety checker."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import pytest

from almost_raft import (
    HardState,
    Heartbeat,
    MemoryStorage,
    Message,
    RaftElectionState,
    RequestVote,
    Role,
    Storage,
    TimeoutNow,
    VoteResponse,
    raft_election,
)
from almost_raft._core import Output
from almost_raft._messages import NodeId
from almost_raft.host import ElectionHost
from almost_raft.testing import LocalCluster
from almost_raft.transports.memory import MemoryNetwork

from .helpers import OPTIONS, T, is_trio, memory_peers, running_host


async def test_many_groups_each_elect_one_leader() -> None:
    async with running_host() as host, AsyncExitStack() as stack:
        clusters = [
            await stack.enter_async_context(
                LocalCluster([f"g{g}n{i}" for i in range(3)], seed=g, host=host, check_safety=True, **OPTIONS)
            )
            for g in range(20)
        ]
        assert host.hosted == 60
        with anyio.fail_after(10):
            leaders = [await cluster.wait_for_leader() for cluster in clusters]
        for cluster, leader in zip(clusters, leaders, strict=True):
            assert cluster.leaders() == {leader.term: {leader.leader_id}}
        # Crash every group's leader: each elects a new one, in a later term.
        for cluster, leader in zip(clusters, leaders, strict=True):
            await cluster.crash(leader.leader_id)  # type: ignore[arg-type]
        with anyio.fail_after(10):
            for cluster, leader in zip(clusters, leaders, strict=True):
                new = await cluster.wait_for_leader(after_term=leader.term)
                assert new.leader_id != leader.leader_id
    assert host.hosted == 0


async def test_a_cancelled_hosted_leader_hands_over(anyio_backend_name: str) -> None:
    async with running_host() as host, LocalCluster(5, seed=3, host=host, check_safety=True, **OPTIONS) as cluster:
        with anyio.fail_after(5):
            old = await cluster.wait_for_leader()
        leader = cluster.states[old.leader_id]  # type: ignore[index]
        with anyio.fail_after(5):
            while not leader.holds_lease:
                await leader.wait_changed()
        stopped_at = anyio.current_time()
        # Stop it gracefully: it hands over with TimeoutNow, no election timeout is waited out.
        await cluster.stop(old.leader_id)  # type: ignore[arg-type]
        with anyio.fail_after(5):
            new = await cluster.wait_for_leader(after_term=old.term)
        assert new.term == old.term + 1
        if is_trio(anyio_backend_name):
            assert anyio.current_time() - stopped_at < T


async def test_a_failed_save_ends_that_election_only() -> None:
    class BrokenDisk:
        async def load(self) -> HardState | None:
            return None

        async def save(self, hard_state: HardState) -> None:
            raise OSError(28, "No space left on device")

    network = MemoryNetwork()
    sent_by_a: list[Message] = []
    deliver_nowait = network.deliver_nowait

    def tapped(sender_id: NodeId, peer_id: NodeId, message: Message) -> None:
        if sender_id == "a":
            sent_by_a.append(message)
        deliver_nowait(sender_id, peer_id, message)

    network.deliver_nowait = tapped  # type: ignore[method-assign]
    ids = ["a", "b", "c"]
    states: dict[NodeId, RaftElectionState] = {}
    controls = []
    async with running_host() as host, anyio.create_task_group() as tg:
        for node_id in ids:
            storage: Storage = BrokenDisk() if node_id == "a" else MemoryStorage()
            state, control = RaftElectionState.init(
                node_id, nodes=memory_peers(network, node_id, ids), storage=storage, min_nodes=3, **OPTIONS
            )
            network.register(node_id, control, host=host, state=state)
            states[node_id] = state
            controls.append(control)
        for node_id in ("b", "c"):
            await tg.start(host.run_election, states[node_id])
        # Raised as itself, not in an exception group, at a's first save.
        with pytest.raises(OSError, match="No space left"), anyio.fail_after(10):
            await host.run_election(states["a"])
        # The others go on: b and c elect a leader between them.
        with anyio.fail_after(10):
            while not any(states[n].role is Role.LEADER for n in ("b", "c")):
                await states["b"].wait_changed()
        tg.cancel_scope.cancel()
    for control in controls:
        control.close()
    assert states["a"].role is Role.TERMINATED
    # Nothing a sent reflects the term it could not save (pre-votes ask about, or grant, a next term).
    assert all(m.term == 0 or (isinstance(m, (RequestVote, VoteResponse)) and m.pre_vote) for m in sent_by_a)


def _flatten(exc: BaseException) -> list[BaseException]:
    inner = getattr(exc, "exceptions", None)
    return [exc] if inner is None else [e for sub in inner for e in _flatten(sub)]


async def test_a_bug_in_one_core_ends_that_election_only() -> None:
    """An exception inside a peer's core is that election's failure, never the sender's send failure."""
    with pytest.raises(Exception) as raised:  # noqa: PT011, PT012
        async with running_host() as host, LocalCluster(3, seed=5, host=host, **OPTIONS) as cluster:
            with anyio.fail_after(5):
                first = await cluster.wait_for_leader()
            leader = cluster.states[first.leader_id]  # type: ignore[index]
            follower = next(n for n in cluster.ids if n != first.leader_id)
            core = cluster.states[follower].core
            assert core is not None
            step = core.step

            def broken(message: Message, now: float) -> Output:
                if isinstance(message, Heartbeat):
                    raise RuntimeError("a bug")
                return step(message, now)

            core.step = broken  # type: ignore[method-assign]
            with anyio.fail_after(5):
                await anyio.sleep_forever()  # until the broken election's failure cancels the cluster
    assert [str(e) for e in _flatten(raised.value)] == ["a bug"]
    assert leader.status().send_failures == 0


async def test_the_host_runs_once_and_checks_its_slice() -> None:
    with pytest.raises(ValueError, match="slice"):
        ElectionHost(slice=0)
    async with running_host() as host:
        with pytest.raises(RuntimeError, match="already runs"):
            await host.run()


async def test_a_state_runs_once_whatever_the_driver() -> None:
    state, control = RaftElectionState.init("a", **OPTIONS)
    async with running_host() as host, anyio.create_task_group() as tg:
        await tg.start(host.run_election, state)
        with pytest.raises(RuntimeError, match="already been started"):
            await raft_election(state)
        control.close()
    assert state.role is Role.TERMINATED


async def test_messages_for_an_election_the_host_does_not_run() -> None:
    state, control = RaftElectionState.init("a", **OPTIONS)
    async with running_host() as host:
        assert host.deliver_nowait(state, TimeoutNow(1, "b")) is None
    control.close()
    state.runtime.inbox.close()
