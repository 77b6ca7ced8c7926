"""The life of one ``raft_election`` on both backends: start, end, membership changes, persistence order."""

from __future__ import annotations

import anyio
import pytest

from almost_raft import (
    AddNode,
    HardState,
    Heartbeat,
    LeaderChanged,
    MemoryStorage,
    Message,
    RaftElectionState,
    RemoveNode,
    RequestVote,
    Role,
    TimeoutNow,
    TransferLeadership,
    VoteResponse,
    raft_election,
)
from almost_raft.transports.memory import MemoryNetwork

from .helpers import (
    OPTIONS,
    FailingStorage,
    FakeNode,
    LogEntry,
    Monitor,
    RecordingStorage,
    T,
    is_trio,
    local_cluster,
    make_state,
    memory_peers,
    run_all,
    view,
    wait_agreed,
)

# ------------------------------------------------------------------- ending


async def test_remove_self_ends_a_follower() -> None:
    async with local_cluster(3) as (cluster, monitor):
        with anyio.fail_after(5):
            elected = await cluster.wait_for_leader()
        node = next(n for n in cluster.ids if n != elected.leader_id)
        state = cluster.states[node]
        with state.subscribe() as events:
            await cluster.controls[node].send(RemoveNode(node))
            with anyio.fail_after(5):
                seen = [event async for event in events]
        # It ends knowing no leader any more.
        assert seen == [elected, LeaderChanged(elected.term, None)]
        assert state.role is Role.TERMINATED
        assert state.leader_id is None
        assert not state.holds_lease
        with anyio.fail_after(5):
            await monitor.wait_until(lambda: node not in cluster.running)
        # A late subscriber sees the final view and the end at once.
        with state.subscribe() as late:
            assert [event async for event in late] == [LeaderChanged(state.term, None)]
        # The two others still make a quorum of three and keep their leader.
        assert cluster.agreed_leader() == elected


async def test_remove_self_from_the_leader_hands_over_first(anyio_backend_name: str) -> None:
    async with local_cluster(3) as (cluster, monitor):
        with anyio.fail_after(5):
            old = await cluster.wait_for_leader()
            leader = cluster.states[old.leader_id]  # type: ignore[index]
            await monitor.wait_until(lambda: leader.holds_lease)
        others = [n for n in cluster.ids if n != leader.self_id]
        asked_at = anyio.current_time()
        await cluster.controls[leader.self_id].send(RemoveNode(leader.self_id))
        with anyio.fail_after(5):
            new = await cluster.wait_for_leader(among=others, after_term=old.term)
        took = anyio.current_time() - asked_at
        assert new.term == old.term + 1
        assert new.leader_id in others
        assert leader.role is Role.TERMINATED
        assert leader.status().transfers_started == 1
        assert monitor.count(TimeoutNow, sender=leader.self_id) == 1
        if is_trio(anyio_backend_name):
            # TimeoutNow: the target stood at once, long before any election timeout.
            assert took < T / 4


async def test_a_cancelled_leader_stops_its_work_before_it_hands_over() -> None:
    """``runtime.before_hand_over`` runs, and ends, before the cancelled leader's TimeoutNow leaves."""
    network = MemoryNetwork()
    ids = ["a", "b", "c"]
    monitor = Monitor(lambda: [])
    monitor.tap(network)
    order: list[str] = []
    states = []
    controls = []
    for node_id in ids:
        state, control = make_state(network, node_id, memory_peers(network, node_id, ids), min_nodes=3)
        states.append(state)
        controls.append(control)

    async def stop_work() -> None:
        order.append("work stopping")
        await anyio.sleep(T / 10)
        order.append("work stopped")

    monitor.on_delivery.append(lambda s, _p, m: order.append("TimeoutNow") if isinstance(m, TimeoutNow) else None)
    async with anyio.create_task_group() as tg:
        scopes = {}
        for state in states:
            scope = anyio.CancelScope()
            scopes[state.self_id] = scope

            async def run(state: RaftElectionState = state, scope: anyio.CancelScope = scope) -> None:
                with scope:
                    await raft_election(state)

            tg.start_soon(run)
        with anyio.fail_after(5):
            first = await wait_agreed(monitor, states)
        leader = states[ids.index(first.leader_id)]  # type: ignore[arg-type]
        with anyio.fail_after(5):
            await monitor.wait_until(lambda: leader.holds_lease)
        leader.runtime.before_hand_over = stop_work
        scopes[leader.self_id].cancel()
        with anyio.fail_after(5):
            await wait_agreed(monitor, [s for s in states if s is not leader], after_term=first.term)
        tg.cancel_scope.cancel()
    for control in controls:
        control.close()
    assert order[:3] == ["work stopping", "work stopped", "TimeoutNow"]


@pytest.mark.parametrize("who", ["follower", "leader"])
async def test_closing_control_ends_the_election(who: str, anyio_backend_name: str) -> None:
    async with local_cluster(3) as (cluster, monitor):
        with anyio.fail_after(5):
            old = await cluster.wait_for_leader()
            leader = cluster.states[old.leader_id]  # type: ignore[index]
            # Acknowledged by its peers: a leader hands over to the one that acknowledged last.
            await monitor.wait_until(lambda: leader.holds_lease)
        node = leader.self_id if who == "leader" else next(n for n in cluster.ids if n != old.leader_id)
        state = cluster.states[node]
        closed_at = anyio.current_time()
        await cluster.controls[node].aclose()
        with anyio.fail_after(5):
            await monitor.wait_until(lambda: node not in cluster.running)
        assert state.role is Role.TERMINATED
        if who == "leader":
            with anyio.fail_after(5):
                new = await cluster.wait_for_leader(after_term=old.term)
            assert new.term == old.term + 1
            if is_trio(anyio_backend_name):
                assert anyio.current_time() - closed_at < T / 4
        else:
            assert cluster.agreed_leader() == old


async def test_cancelling_the_task_ends_the_election() -> None:
    state, control = RaftElectionState.init("solo", **OPTIONS)
    with control:
        async with anyio.create_task_group() as tg:
            await tg.start(raft_election, state)
            events = state.subscribe()
            with anyio.fail_after(5):
                # Alone (min_nodes=1), it elects itself.
                async for event in events:
                    if event.leader_id == "solo":
                        break
            assert state.is_leader
            tg.cancel_scope.cancel()
        assert state.role is Role.TERMINATED
        assert not state.is_leader
        assert not state.holds_lease
        with anyio.fail_after(5):
            # The leader stepped down as it went, then the subscription ended.
            assert [event async for event in events] == [LeaderChanged(1, None)]


async def test_a_state_runs_only_once() -> None:
    state, control = RaftElectionState.init("solo", **OPTIONS)
    with control:
        async with anyio.create_task_group() as tg:
            await tg.start(raft_election, state)
            with pytest.raises(RuntimeError, match="already"):
                await raft_election(state)
            # The refused second run did not disturb the first.
            assert state.role is not Role.TERMINATED
            with anyio.fail_after(5), state.subscribe() as events:
                async for event in events:
                    if event.leader_id == "solo":
                        break
            tg.cancel_scope.cancel()
        with pytest.raises(RuntimeError, match="already"):
            await raft_election(state)


async def test_start_returns_once_the_storage_is_loaded() -> None:
    peers = [FakeNode("b"), FakeNode("c")]
    storage = MemoryStorage(HardState(7, "b"))
    state, control = RaftElectionState.init("a", nodes=peers, storage=storage, min_nodes=3, **OPTIONS)
    assert state.term == 0
    with control:
        async with anyio.create_task_group() as tg:
            await tg.start(raft_election, state)
            status = state.status()
            assert (status.role, status.term, status.voted_for, status.leader_id) == (Role.FOLLOWER, 7, "b", None)
            assert status.peer_ids == ("b", "c")
            # Just started: it refuses votes for T, as if it had heard from a leader.
            await control.send(RequestVote(8, "c"))
            with anyio.fail_after(5):
                while not peers[1].sent:
                    await anyio.wait_all_tasks_blocked()
            assert peers[1].sent == [VoteResponse(7, "a", False)]
            assert view(state) == (Role.FOLLOWER, 7, None, "b")
            tg.cancel_scope.cancel()
    assert storage.saves == 0


async def test_a_storage_that_cannot_load_fails_the_start() -> None:
    state, control = RaftElectionState.init("a", storage=FailingStorage(), **OPTIONS)
    with control:
        async with anyio.create_task_group() as tg:
            with pytest.raises(OSError, match="unreadable"):
                await tg.start(raft_election, state)
        assert state.role is Role.TERMINATED


# --------------------------------------------------------------- membership


async def test_no_election_below_min_nodes(anyio_backend_name: str) -> None:
    network = MemoryNetwork()
    ids = ["a", "b", "c"]
    built = {n: make_state(network, n, min_nodes=3) for n in ids}
    states = [state for state, _ in built.values()]
    monitor = Monitor(lambda: states)
    monitor.tap(network)

    def nobody_stood() -> bool:
        return all(s.status().pre_votes_started == 0 and s.term == 0 and s.role is Role.FOLLOWER for s in states)

    try:
        async with anyio.create_task_group() as tg:
            await run_all(tg, states, monitor)
            # Nothing can happen, so there is no event to wait for: let several timeouts pass.
            await anyio.sleep(3 * T)
            assert nobody_stood()
            # One peer each for a and b: a cluster of two is still below min_nodes.
            await built["a"][1].send(AddNode(network.node("b", sender_id="a")))
            await built["b"][1].send(AddNode(network.node("a", sender_id="b")))
            await anyio.sleep(3 * T)
            assert nobody_stood()
            assert monitor.deliveries == []
            # The second peer makes three.
            for node_id, (_, control) in built.items():
                for peer in memory_peers(network, node_id, ids):
                    await control.send(AddNode(peer))  # a known id only replaces the handle
            with anyio.fail_after(5):
                elected = await wait_agreed(monitor, states)
            assert elected.term == 1
            assert all(len(s.peer_ids) == 2 for s in states)
            tg.cancel_scope.cancel()
    finally:
        for _, control in built.values():
            control.close()
    monitor.assert_safe()


async def test_add_node_with_a_known_id_replaces_the_handle() -> None:
    async with local_cluster(3) as (cluster, monitor):
        with anyio.fail_after(5):
            elected = await cluster.wait_for_leader()
        assert elected.leader_id is not None
        leader = cluster.states[elected.leader_id]
        peer = next(n for n in cluster.ids if n != leader.self_id)
        peers_before = leader.peer_ids
        replacement = FakeNode(peer)  # records, delivers nowhere

        mark = len(monitor.deliveries)
        await cluster.controls[leader.self_id].send(AddNode(replacement))
        with anyio.fail_after(5):
            await monitor.wait_until(lambda: sum(isinstance(m, Heartbeat) for m in replacement.sent) >= 3)
        # At most the one send under way when the handle was replaced went the old way.
        assert monitor.count(Heartbeat, sender=leader.self_id, to=peer, since=mark) <= 1
        assert leader.peer_ids == peers_before
        assert all(m.term == elected.term for m in replacement.sent if isinstance(m, Heartbeat))

        # And back to the network handle.
        mark = len(monitor.deliveries)
        recorded = len(replacement.sent)
        await cluster.controls[leader.self_id].send(AddNode(cluster.network.node(peer, sender_id=leader.self_id)))
        with anyio.fail_after(5):
            await monitor.wait_until(lambda: monitor.count(Heartbeat, sender=leader.self_id, to=peer, since=mark) >= 3)
        assert len(replacement.sent) <= recorded + 1
        assert leader.is_leader
        assert leader.term == elected.term


async def test_remove_node_at_run_time() -> None:
    async with local_cluster(3) as (cluster, monitor):
        with anyio.fail_after(5):
            elected = await cluster.wait_for_leader()
            leader = cluster.states[elected.leader_id]  # type: ignore[index]
            await monitor.wait_until(lambda: leader.holds_lease)
        peer = next(n for n in cluster.ids if n != leader.self_id)

        # An unknown id: nothing changes, and it is counted.
        rejected = leader.status().messages_rejected
        before = view(leader), leader.peer_ids
        await cluster.controls[leader.self_id].send(RemoveNode("ghost"))
        with anyio.fail_after(5):
            await monitor.wait_until(lambda: leader.status().messages_rejected == rejected + 1)
        assert (view(leader), leader.peer_ids) == before

        # A known peer leaves the leader's view: no more heartbeats to it.
        await cluster.controls[leader.self_id].send(RemoveNode(peer))
        with anyio.fail_after(5):
            await monitor.wait_until(lambda: peer not in leader.peer_ids)
            mark = len(monitor.deliveries)
            # The queue to the removed peer may still flush; count from two rounds later.
            await monitor.wait_until(lambda: monitor.count(Heartbeat, sender=leader.self_id, since=mark) >= 2)
            mark = len(monitor.deliveries)
            await monitor.wait_until(lambda: monitor.count(Heartbeat, sender=leader.self_id, since=mark) >= 3)
        assert monitor.count(Heartbeat, sender=leader.self_id, to=peer, since=mark) == 0
        # min_nodes=3 keeps the quorum at two: the leader and the remaining follower.
        assert leader.is_leader
        assert leader.term == elected.term


async def test_add_node_beyond_max_nodes_is_refused() -> None:
    async with local_cluster(3, max_nodes=3) as (cluster, monitor):
        with anyio.fail_after(5):
            elected = await cluster.wait_for_leader()
        assert elected.leader_id is not None
        leader = cluster.states[elected.leader_id]
        extra = FakeNode("n4")
        rejected = leader.status().messages_rejected
        before = view(leader), leader.peer_ids
        await cluster.controls[leader.self_id].send(AddNode(extra))
        with anyio.fail_after(5):
            await monitor.wait_until(lambda: leader.status().messages_rejected == rejected + 1)
            mark = len(monitor.deliveries)
            await monitor.wait_until(lambda: monitor.count(Heartbeat, sender=leader.self_id, since=mark) >= 4)
        assert (view(leader), leader.peer_ids) == before
        assert extra.sent == []


# -------------------------------------------------------------- persistence


async def test_hard_state_is_saved_before_any_message_reflecting_it() -> None:
    network = MemoryNetwork()
    ids = ["a", "b", "c"]
    logs: dict[str, list[LogEntry]] = {n: [] for n in ids}
    built = {
        n: make_state(
            network,
            n,
            [FakeNode(p, inner=network.node(p, sender_id=n), log=logs[n]) for p in ids if p != n],
            storage=RecordingStorage(logs[n], delay=0.002),
            min_nodes=3,
        )
        for n in ids
    }
    states = [state for state, _ in built.values()]
    monitor = Monitor(lambda: states)
    monitor.tap(network)
    try:
        async with anyio.create_task_group() as tg:
            await run_all(tg, states, monitor)
            with anyio.fail_after(5):
                first = await wait_agreed(monitor, states)
                # A second election, by transfer, for more votes to check.
                target = next(n for n in ids if n != first.leader_id)
                await built[first.leader_id][1].send(TransferLeadership(target))  # type: ignore[index]
                second = await wait_agreed(monitor, states, after_term=first.term)
            assert second.leader_id == target
            tg.cancel_scope.cancel()
    finally:
        for _, control in built.values():
            control.close()

    requests = votes = 0
    for node_id, log in logs.items():
        saved = HardState(0, None)
        for kind, to, item in log:
            if kind == "save":
                assert isinstance(item, HardState)
                saved = item
                continue
            message: Message = item  # type: ignore[assignment]
            if isinstance(message, RequestVote) and not message.pre_vote:
                # A candidate's own vote is durable before it asks for votes.
                assert saved == HardState(message.term, node_id), (node_id, message, log)
                requests += 1
            elif isinstance(message, VoteResponse) and message.granted and not message.pre_vote:
                # A vote is durable before it is given.
                assert saved == HardState(message.term, to), (node_id, message, log)
                votes += 1
            if not (message.pre_vote if isinstance(message, RequestVote) else False) and not (
                isinstance(message, VoteResponse) and message.pre_vote and message.granted
            ):
                # Any other message carries this node's term, which must be durable already.
                assert message.term <= saved.term, (node_id, message, log)
    assert requests >= 2
    assert votes >= 2
