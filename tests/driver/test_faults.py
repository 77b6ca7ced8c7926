"""Faults on both backends: partitions, an isolated follower, hung and raising peers, a stalled subscriber.

Time bounds are asserted on trio only, whose virtual clock is exact; asyncio
runs the same scenarios in real time and checks only what must happen.
"""

from __future__ import annotations

import logging
from typing import Literal

import anyio
import pytest

from almost_raft import AddNode, Heartbeat, LeaderChanged, Message, RequestVote, Role, TransferLeadership
from almost_raft._messages import NodeId
from almost_raft.transports.memory import MemoryNetwork

from .helpers import (
    HB,
    FakeNode,
    Monitor,
    T,
    agreed,
    is_trio,
    local_cluster,
    make_state,
    memory_peers,
    run_all,
    wait_agreed,
    warnings_about,
)


@pytest.mark.parametrize(("size", "minority_size"), [(3, 1), (5, 2)], ids=["3:[leader]", "5:[leader,one]"])
async def test_leader_in_a_minority_steps_down(size: int, minority_size: int, anyio_backend_name: str) -> None:
    async with local_cluster(size) as (cluster, monitor):
        with anyio.fail_after(5):
            old = await cluster.wait_for_leader()
            leader = cluster.states[old.leader_id]  # type: ignore[index]
            await monitor.wait_until(lambda: leader.holds_lease)
        followers = [n for n in cluster.ids if n != leader.self_id]
        minority = [leader.self_id, *followers[: minority_size - 1]]
        majority = followers[minority_size - 1 :]

        with leader.subscribe() as events:
            assert events.receive_nowait() == old
            cut_at = anyio.current_time()
            cluster.partition(minority, majority)
            with anyio.fail_after(5):
                change = await events.receive()
            took = anyio.current_time() - cut_at
            assert change == LeaderChanged(old.term, None)
        status = leader.status()
        assert status.role is Role.FOLLOWER
        assert status.check_quorum_step_downs == 1
        assert status.step_downs == 1
        assert not status.holds_lease
        if is_trio(anyio_backend_name):
            # The last acknowledged round left at most one heartbeat interval before the cut,
            # and the leader checks its quorum at every heartbeat: it steps down within T of it.
            assert T - HB - 1e-9 <= took <= T + HB + 1e-9

        with anyio.fail_after(5):
            new = await cluster.wait_for_leader(among=majority, after_term=old.term)
        assert new.leader_id in majority
        # Pre-vote: the minority never raised its term, whatever it tried.
        assert all(cluster.states[n].term == old.term for n in minority)

        cluster.heal_all()
        with anyio.fail_after(5):
            back = await cluster.wait_for_leader()
        assert back == new
        assert leader.role is Role.FOLLOWER
        assert leader.leader_id == new.leader_id
        # The monitor checked "at most one lease" at every message and every view change.
        assert monitor.checks > 0
        monitor.assert_safe()


@pytest.mark.parametrize("rounds", [1, 6], ids=["one-timeout", "six-timeouts"])
async def test_isolated_follower_returns_without_disturbing_the_leader(rounds: int, anyio_backend_name: str) -> None:
    async with local_cluster(3) as (cluster, monitor):
        with anyio.fail_after(5):
            elected = await cluster.wait_for_leader()
        assert elected.leader_id is not None
        leader = cluster.states[elected.leader_id]
        lonely = cluster.states[next(n for n in cluster.ids if n != elected.leader_id)]
        pre_votes = lonely.status().pre_votes_started

        cluster.isolate(lonely.self_id)
        cut_at = anyio.current_time()
        with anyio.fail_after(5):
            await monitor.wait_until(lambda: lonely.status().pre_votes_started >= pre_votes + rounds)
        if is_trio(anyio_backend_name):
            assert anyio.current_time() - cut_at >= rounds * T
        # Cut off, it asked and asked, but never raised its term.
        assert lonely.term == elected.term
        assert lonely.status().elections_started == 0
        assert cluster.agreed_leader([n for n in cluster.ids if n != lonely.self_id]) == elected

        # The worst moment to come back: heal just as it asks for pre-votes again, so that
        # the question reaches the others before any heartbeat reaches it.
        healed: list[RequestVote] = []

        def heal_on_pre_vote(sender: NodeId, _to: NodeId, message: Message) -> None:
            if sender == lonely.self_id and isinstance(message, RequestVote) and not healed:
                assert message.pre_vote
                cluster.heal_all()
                healed.append(message)

        monitor.on_delivery.append(heal_on_pre_vote)
        with anyio.fail_after(5):
            await monitor.wait_until(lambda: bool(healed))
        mark = len(monitor.deliveries)
        with anyio.fail_after(5):
            back = await cluster.wait_for_leader()
            # A few more rounds, to see that its return changed nothing.
            await monitor.wait_until(lambda: monitor.count(Heartbeat, to=lonely.self_id, since=mark) >= 3)
        assert back == elected
        assert cluster.agreed_leader() == elected
        assert leader.status().step_downs == 0
        assert lonely.role is Role.FOLLOWER
        assert lonely.status().elections_started == 0


@pytest.mark.parametrize("mode", ["hang", "raise"])
async def test_hung_or_raising_peers_do_not_stop_the_others(
    mode: Literal["hang", "raise"], anyio_backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="almost_raft")
    network = MemoryNetwork()
    ids = ["a", "b", "c"]
    bad_ids = ["x", "y"]
    bad: dict[NodeId, list[FakeNode]] = {n: [FakeNode(b, mode=mode) for b in bad_ids] for n in ids}
    built = {n: make_state(network, n, [*memory_peers(network, n, ids), *bad[n]], min_nodes=5) for n in ids}
    states = [state for state, _ in built.values()]
    monitor = Monitor(lambda: states)
    monitor.tap(network)
    try:
        async with anyio.create_task_group() as tg:
            await run_all(tg, states, monitor)
            with anyio.fail_after(5):
                elected = await wait_agreed(monitor, states)
                leader = built[elected.leader_id][0]  # type: ignore[index]
                await monitor.wait_until(lambda: leader.holds_lease)
            mark = len(monitor.deliveries)
            steady_from = anyio.current_time()
            rounds = 20
            with anyio.fail_after(5):
                await monitor.wait_until(
                    lambda: monitor.count(Heartbeat, sender=leader.self_id, since=mark) >= rounds * (len(ids) - 1)
                )
            took = anyio.current_time() - steady_from
            assert agreed(states) == elected
            status = leader.status()
            assert status.step_downs == 0
            assert status.holds_lease
            # Every heartbeat also went to the bad peers, and each of those sends failed.
            assert all(sum(isinstance(m, Heartbeat) for m in fake.sent) >= rounds // 2 for fake in bad[leader.self_id])
            assert status.send_failures >= rounds
            if is_trio(anyio_backend_name):
                # The bad peers did not slow the heartbeats down: one round every HB.
                assert took <= (rounds + 1) * HB + 1e-9
            tg.cancel_scope.cancel()
    finally:
        for _, control in built.values():
            control.close()
    monitor.assert_safe()
    # Logged once per change of state (working -> failing), not once per message.
    for node_id in ids:
        for bad_id in bad_ids:
            failures = warnings_about(caplog, node_id, f"to {bad_id!r} failed")
            assert len(failures) <= 1, failures
    for bad_id in bad_ids:
        assert len(warnings_about(caplog, leader.self_id, f"to {bad_id!r} failed")) == 1
    if mode == "hang":
        assert "message_timeout" in warnings_about(caplog, leader.self_id, "failed")[0].getMessage()
    else:
        assert "PeerError" in warnings_about(caplog, leader.self_id, "failed")[0].getMessage()


async def test_send_failures_are_logged_once_per_change(
    anyio_backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="almost_raft")
    async with local_cluster(3) as (cluster, monitor):
        with anyio.fail_after(5):
            elected = await cluster.wait_for_leader()
        assert elected.leader_id is not None
        leader = cluster.states[elected.leader_id]
        peer = next(n for n in cluster.ids if n != leader.self_id)
        flaky = FakeNode(peer, inner=cluster.network.node(peer, sender_id=leader.self_id))
        await cluster.controls[leader.self_id].send(AddNode(flaky))

        def heartbeats() -> int:
            return sum(isinstance(m, Heartbeat) for m in flaky.sent)

        def recovered() -> int:
            return len([r for r in caplog.records if f"sending to {peer!r} works again" in r.getMessage()])

        async def fail_then_recover() -> None:
            flaky.mode = "raise"
            failures = leader.status().send_failures
            await monitor.wait_until(lambda: leader.status().send_failures >= failures + 3)
            flaky.mode = "forward"
            done = recovered()
            await monitor.wait_until(lambda: recovered() > done)

        with anyio.fail_after(5):
            await monitor.wait_until(lambda: heartbeats() >= 1)
            await fail_then_recover()
            await fail_then_recover()
        assert leader.status().send_failures >= 6
        assert len(warnings_about(caplog, leader.self_id, f"to {peer!r} failed")) == 2
        assert recovered() == 2
        if is_trio(anyio_backend_name):
            # The follower missed three heartbeats at a time, less than T: nothing changed.
            assert cluster.agreed_leader() == elected


async def test_a_subscriber_that_never_reads_blocks_nothing() -> None:
    changes = 20
    async with local_cluster(3) as (cluster, monitor):
        watched = cluster.states[cluster.ids[0]]
        slow = watched.subscribe(buffer=4)
        fast_events: list[LeaderChanged] = []

        async def read_all() -> None:
            with watched.subscribe(buffer=1024) as fast:
                async for event in fast:
                    fast_events.append(event)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_all)
            with anyio.fail_after(10):
                leader = await cluster.wait_for_leader()
                for _ in range(changes):
                    assert leader.leader_id is not None
                    target = cluster.ids[(cluster.ids.index(leader.leader_id) + 1) % len(cluster.ids)]
                    await cluster.controls[leader.leader_id].send(TransferLeadership(target))
                    leader = await cluster.wait_for_leader(after_term=leader.term)
                latest = LeaderChanged(watched.term, watched.leader_id)
                await monitor.wait_until(lambda: bool(fast_events) and fast_events[-1] == latest)
            tg.cancel_scope.cancel()

        read: list[LeaderChanged] = []
        while True:
            try:
                read.append(slow.receive_nowait())
            except anyio.WouldBlock:
                break
        slow.close()
        assert read[-1] == latest == leader
        assert len(read) == 4
        assert read == fast_events[-4:]
        assert slow.missed == len(fast_events) - len(read)
        assert slow.missed >= changes


async def test_subscription_ends_when_the_election_ends() -> None:
    async with local_cluster(3) as (cluster, _monitor):
        with anyio.fail_after(5):
            elected = await cluster.wait_for_leader()
        node = next(n for n in cluster.ids if n != elected.leader_id)
        state = cluster.states[node]
        with state.subscribe() as events:
            await cluster.crash(node)
            with anyio.fail_after(5):
                seen = [event async for event in events]
        # The view it started with, then "no leader known" as the election ends.
        assert seen == [elected, LeaderChanged(elected.term, None)]
        assert state.role is Role.TERMINATED
        assert not state.holds_lease
        assert state.leader_id is None
