"""``status()``: contact ages, per-peer acknowledgements, candidacy, counters by kind, ``as_dict()``."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import pytest

from almost_raft import (
    AddNode,
    Heartbeat,
    Message,
    RaftElectionState,
    RemoveNode,
    RequestVote,
    Role,
    Status,
    raft_election,
)
from almost_raft._messages import NodeId
from almost_raft.testing import LocalCluster

T = 0.150
HEARTBEAT = 0.050
LATENCY = 0.001
OPTIONS: dict[str, Any] = {"election_timeout": T, "heartbeat_interval": HEARTBEAT, "message_timeout": 0.050}
LEASE = T * 0.99 / 1.01
KIND_COUNTS = (
    ("received_by_kind", "messages_received"),
    ("sent_by_kind", "messages_sent"),
    ("rejected_by_kind", "messages_rejected"),
    ("dropped_by_kind", "messages_dropped"),
)


@asynccontextmanager
async def running_cluster(nodes: int | Sequence[NodeId] = 3, seed: int = 1) -> AsyncIterator[LocalCluster]:
    """A running ``LocalCluster``; its ``control`` streams are closed at the end."""
    cluster = LocalCluster(nodes, seed=seed, latency=LATENCY, **OPTIONS)
    try:
        async with cluster:
            yield cluster
    finally:
        # LocalCluster leaves them open: a ResourceWarning, an error here.
        for control in cluster.controls.values():
            control.close()


async def wait_rounds(state: RaftElectionState, rounds: int) -> None:
    """Wait until the leader *state* has sent *rounds* more heartbeat rounds (each renews its lease)."""
    target = state.status().sent_by_kind.get("Heartbeat", 0) + rounds * len(state.peer_ids)
    with anyio.fail_after(5):
        while state.status().sent_by_kind.get("Heartbeat", 0) < target:
            await state.wait_changed()


def assert_consistent(status: Status) -> None:
    """The by-kind counters add up to their totals, and as_dict() is plain JSON."""
    for by_kind, total in KIND_COUNTS:
        assert sum(getattr(status, by_kind).values()) == getattr(status, total), by_kind
    assert sum(status.send_failures_by_peer.values()) == status.send_failures
    as_dict = status.as_dict()
    assert set(as_dict) == {f.name for f in dataclasses.fields(Status)}
    decoded = json.loads(json.dumps(as_dict))
    assert decoded == as_dict
    assert decoded["role"] == status.role.value


def grew(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


async def test_leader_and_follower_views(anyio_backend_name: str) -> None:
    # Exact bounds on trio's virtual time; on asyncio real-time jitter only allows loose ones.
    exact = anyio_backend_name == "trio"
    ack_bound = HEARTBEAT + 2 * LATENCY if exact else T
    contact_bound = HEARTBEAT + LATENCY if exact else T
    async with running_cluster() as cluster:
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
        assert leader.leader_id is not None
        lead = cluster.states[leader.leader_id]
        followers = [n for n in cluster.ids if n != leader.leader_id]
        await wait_rounds(lead, 3)

        status = lead.status()
        assert (status.role, status.is_leader, status.holds_lease, status.leader_id) == (
            Role.LEADER,
            True,
            True,
            leader.leader_id,
        )
        assert 0 < status.lease_remaining <= LEASE
        assert status.leader_contact_age is None
        assert not status.candidacy_paused
        acks = dict(status.peer_last_ack)
        assert set(acks) == set(followers)
        for age in acks.values():
            assert age is not None
            assert 0 <= age <= ack_bound
        assert status.elections_won == 1
        assert status.sent_by_kind["Heartbeat"] >= 2 * 4
        assert status.received_by_kind["HeartbeatResponse"] > 0
        assert status.received_by_kind["VoteResponse"] > 0
        assert_consistent(status)

        for node_id in followers:
            status = cluster.states[node_id].status()
            assert (status.role, status.holds_lease, status.lease_remaining) == (Role.FOLLOWER, False, 0.0)
            assert status.leader_id == leader.leader_id
            assert status.peer_last_ack == ()
            assert status.leader_contact_age is not None
            assert 0 <= status.leader_contact_age <= contact_bound
            assert status.received_by_kind["Heartbeat"] > 0
            assert status.sent_by_kind["HeartbeatResponse"] == status.received_by_kind["Heartbeat"]
            assert status.elections_won == 0
            assert_consistent(status)

        # A follower that crashes stops acknowledging: its age grows, the other's does not.
        gone, alive = followers
        crashed_at = anyio.current_time()
        await cluster.crash(gone)
        await wait_rounds(lead, 4)
        acks = dict(lead.status().peer_last_ack)
        gone_age, alive_age = acks[gone], acks[alive]
        assert gone_age is not None
        assert alive_age is not None
        assert gone_age > 3 * HEARTBEAT
        assert alive_age <= ack_bound
        if exact:
            assert gone_age >= anyio.current_time() - crashed_at
        assert lead.holds_lease  # a quorum of 2 of 3 still acknowledges
        before = lead.status()
        await wait_rounds(lead, 1)
        after = lead.status()
        for name in ("messages_sent", "messages_received", "elections_started", "elections_won"):
            assert getattr(after, name) >= getattr(before, name)


async def test_no_contact_age_before_any_leader_and_after_the_end(anyio_backend_name: str) -> None:
    state, control = RaftElectionState.init("alone", min_nodes=3, **OPTIONS)  # never enough members to elect
    assert_consistent(state.status())
    with control:
        async with anyio.create_task_group() as tg:
            await tg.start(raft_election, state)
            await anyio.sleep(2 * T)
            status = state.status()
            assert (status.role, status.leader_contact_age, status.peer_last_ack) == (Role.FOLLOWER, None, ())
            assert_consistent(status)
            tg.cancel_scope.cancel()
    status = state.status()
    assert status.role is Role.TERMINATED
    assert (status.leader_contact_age, status.lease_remaining) == (None, 0.0)
    assert_consistent(status)


async def test_candidacy_paused_is_reported(anyio_backend_name: str) -> None:
    async with running_cluster() as cluster:
        state = cluster.states[cluster.ids[0]]
        assert not state.status().candidacy_paused
        state.pause_candidacy()
        await anyio.wait_all_tasks_blocked()
        assert state.status().candidacy_paused
        assert state.status().as_dict()["candidacy_paused"] is True
        state.resume_candidacy()
        await anyio.wait_all_tasks_blocked()
        assert not state.status().candidacy_paused


async def test_rejected_input_is_counted_by_kind(anyio_backend_name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="almost_raft")
    async with running_cluster() as cluster:
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
        node_id = next(n for n in cluster.ids if n != leader.leader_id)
        state = cluster.states[node_id]
        control = cluster.controls[node_id]
        before = state.status()
        nonsense = Heartbeat(leader.term, leader.leader_id or "x", 1)
        object.__setattr__(nonsense, "term", -1)  # fails validate(): dropped by the driver
        control.send_nowait(Heartbeat(leader.term, "stranger", 1))  # unknown sender: dropped by the core
        control.send_nowait(nonsense)
        control.send_nowait(cast(Any, "not a message"))  # wrong type
        control.send_nowait(RemoveNode("nobody"))  # unknown node
        control.send_nowait(AddNode(cluster.network.node(node_id, sender_id=node_id)))  # itself
        await anyio.wait_all_tasks_blocked()
        after = state.status()
    assert after.messages_rejected - before.messages_rejected == 5
    assert grew(before.rejected_by_kind, after.rejected_by_kind) == {
        "Heartbeat": 2,
        "str": 1,
        "RemoveNode": 1,
        "AddNode": 1,
    }
    assert after.leader_id == leader.leader_id  # bad input changes nothing
    assert len([r for r in caplog.records if r.name == "almost_raft" and r.levelno == logging.WARNING]) >= 5
    assert_consistent(after)


async def test_a_full_peer_queue_drops_and_counts_by_kind(anyio_backend_name: str) -> None:
    async with running_cluster() as cluster:
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
        node_id, peer = (n for n in cluster.ids if n != leader.leader_id)
        state = cluster.states[node_id]
        before = state.status()
        # 200 vote requests at once (refused at once: the node heard its
        # leader less than T ago; a pre-vote would be held instead): each
        # refusal goes to `peer`, whose sender needs a latency per message,
        # so its queue (64) overflows.
        for _ in range(200):
            cluster.controls[node_id].send_nowait(RequestVote(state.term + 1, peer))
        await anyio.wait_all_tasks_blocked()
        after = state.status()
        assert after.leader_id == leader.leader_id
    dropped = after.messages_dropped - before.messages_dropped
    assert dropped > 0
    assert grew(before.dropped_by_kind, after.dropped_by_kind) == {"VoteResponse": dropped}
    assert grew(before.received_by_kind, after.received_by_kind).get("RequestVote") == 200
    assert after.votes_refused - before.votes_refused == 200
    assert_consistent(after)


class BrokenNode:
    """A peer handle whose every send raises."""

    def __init__(self, node_id: NodeId) -> None:
        self._node_id = node_id
        self.calls = 0

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    async def send_message(self, message: Message) -> None:
        self.calls += 1
        raise ConnectionResetError("link down")


async def test_send_failures_are_counted_by_peer(anyio_backend_name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="almost_raft")
    async with running_cluster([1, 2, 3]) as cluster:  # int ids: as_dict() turns keys into str
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
        assert leader.leader_id is not None
        lead = cluster.states[leader.leader_id]
        broken_id, healthy_id = (n for n in cluster.ids if n != leader.leader_id)
        broken = BrokenNode(broken_id)
        await cluster.controls[leader.leader_id].send(AddNode(broken))  # replaces the handle
        await wait_rounds(lead, 4)
        status = lead.status()
        assert lead.holds_lease  # the healthy follower is enough for a quorum
    assert broken.calls >= 4
    assert status.send_failures_by_peer == {broken_id: status.send_failures}
    assert status.send_failures >= 4
    assert status.as_dict()["send_failures_by_peer"] == {str(broken_id): status.send_failures}
    assert status.as_dict()["peer_ids"] == list(status.peer_ids)
    assert set(cast(dict[str, object], status.as_dict()["peer_last_ack"])) == {str(broken_id), str(healthy_id)}
    failures = [r for r in caplog.records if r.levelno == logging.WARNING and "failed" in r.getMessage()]
    assert len(failures) == 1, "a failing peer is logged once, not once per message"
    assert "link down" in failures[0].getMessage()
    assert_consistent(status)
