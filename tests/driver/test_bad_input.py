"""Bad input into ``control`` on both backends: dropped, counted, logged, and it changes no state.

Each case feeds a batch of bad items into one node of an elected 3-node
cluster, waits until the node has counted every one of them as rejected,
then compares every node's role, term, leader and vote with what they were.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import pytest

from almost_raft import (
    AddNode,
    Heartbeat,
    HeartbeatResponse,
    RemoveNode,
    RequestVote,
    TimeoutNow,
    TransferLeadership,
    VoteResponse,
)
from almost_raft._messages import NodeId
from almost_raft.transports import PeerDisconnected

from .helpers import HB, FakeNode, T, feed, local_cluster, view, warnings_about


def corrupt(item: object, **fields: object) -> object:
    """*item* with *fields* overwritten after construction, past the frozen dataclass's checks."""
    for name, value in fields.items():
        object.__setattr__(item, name, value)
    return item


@dataclass(frozen=True)
class Ctx:
    """What a case needs to build its bad items."""

    term: int
    leader: NodeId
    follower: NodeId
    other: NodeId


@dataclass(frozen=True)
class Case:
    to_leader: bool
    items: Callable[[Ctx], list[object]]


CASES = {
    "wrong-type": Case(
        False,
        lambda c: [
            None,
            {"term": c.term + 5, "candidate_id": c.other},
            "RequestVote",
            42,
            (c.term + 5, c.other),
            Heartbeat,  # the class, not a message
            FakeNode(c.other),  # a Node is not a control message; AddNode(node) is
        ],
    ),
    "unknown-sender": Case(
        False,
        lambda c: [
            RequestVote(c.term + 5, "stranger"),
            RequestVote(c.term + 5, "stranger", pre_vote=True),
            RequestVote(c.term + 5, "stranger", transfer=True),
            VoteResponse(c.term + 5, "stranger", True),
            Heartbeat(c.term + 5, "stranger", 1),
            HeartbeatResponse(c.term + 5, "stranger", False),
            TimeoutNow(c.term, "stranger"),
            TimeoutNow(c.term + 5, 99),
        ],
    ),
    "from-self": Case(
        False,
        lambda c: [
            RequestVote(c.term + 5, c.follower),
            RequestVote(c.term + 5, c.follower, transfer=True),
            Heartbeat(c.term + 5, c.follower, 1),
            HeartbeatResponse(c.term + 5, c.follower, True),
            VoteResponse(c.term + 5, c.follower, True),
            TimeoutNow(c.term, c.follower),
        ],
    ),
    "leader-from-self": Case(
        True,
        lambda c: [
            Heartbeat(c.term + 5, c.leader, 1),
            HeartbeatResponse(c.term + 5, c.leader, True),
            RequestVote(c.term + 5, c.leader, transfer=True),
        ],
    ),
    "corrupted-fields": Case(
        False,
        lambda c: [
            corrupt(Heartbeat(c.term, c.leader, 1), term=str(c.term + 5)),
            corrupt(Heartbeat(c.term, c.leader, 1), seq=-1),
            corrupt(RequestVote(c.term + 5, c.other), term=-1),
            corrupt(RequestVote(c.term + 5, c.other, transfer=True), candidate_id=[c.other]),
            corrupt(RequestVote(c.term + 5, c.other), transfer="yes"),
            corrupt(VoteResponse(c.term, c.other, False), granted=1),
            corrupt(HeartbeatResponse(c.term, c.other, True), follower_id=None),
            corrupt(TimeoutNow(c.term, c.leader), term=True),
            corrupt(TimeoutNow(c.term, c.leader), leader_id=1.5),
        ],
    ),
    "corrupted-control": Case(
        False,
        lambda c: [
            corrupt(AddNode(FakeNode("newcomer")), node=object()),
            corrupt(AddNode(FakeNode("newcomer")), node=FakeNode(True)),
            corrupt(RemoveNode(c.other), node_id=2.5),
            corrupt(RemoveNode(c.follower), node_id=None),
            corrupt(TransferLeadership(c.other), target_id=True),
            corrupt(PeerDisconnected(c.other), node_id=2.5),
            # An id outside the view, or the node's own: refused by the election and counted.
            PeerDisconnected("stranger"),
            PeerDisconnected(c.follower),
        ],
    ),
    "leader-corrupted-control": Case(
        True,
        lambda c: [
            corrupt(TransferLeadership(c.follower), target_id=[c.follower]),
            corrupt(RemoveNode(c.leader), node_id=b"x"),
            PeerDisconnected("stranger"),
        ],
    ),
    "leader-ack-for-a-round-never-sent": Case(
        True,
        lambda c: [
            HeartbeatResponse(c.term, c.follower, True, 10**9),
            HeartbeatResponse(c.term, c.other, True, 10**6),
        ],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_bad_input_changes_nothing(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="almost_raft")
    async with local_cluster(3) as (cluster, monitor):
        with anyio.fail_after(5):
            elected = await cluster.wait_for_leader()
            assert elected.leader_id is not None
            leader = cluster.states[elected.leader_id]
            await monitor.wait_until(lambda: leader.holds_lease)
        follower, other = (n for n in cluster.ids if n != leader.self_id)
        items = case.items(Ctx(elected.term, leader.self_id, follower, other))
        target = leader if case.to_leader else cluster.states[follower]

        before = {n: view(cluster.states[n]) for n in cluster.ids}
        rejected = target.status().messages_rejected
        logged = len(warnings_about(caplog, target.self_id))
        for item in items:
            await feed(cluster.controls[target.self_id], item)
        with anyio.fail_after(5):
            await monitor.wait_until(lambda: target.status().messages_rejected >= rejected + len(items))
            await anyio.wait_all_tasks_blocked()

        assert target.status().messages_rejected == rejected + len(items)
        assert {n: view(cluster.states[n]) for n in cluster.ids} == before
        assert target.peer_ids == tuple(n for n in cluster.ids if n != target.self_id)
        assert len(warnings_about(caplog, target.self_id)) >= logged + len(items)
        assert cluster.agreed_leader() == elected
        # Still working normally more than T later: the lease keeps being renewed by real rounds.
        mark = len(monitor.deliveries)
        with anyio.fail_after(5):
            rounds = round(T / HB) + 2
            await monitor.wait_until(lambda: monitor.count(Heartbeat, sender=leader.self_id, since=mark) >= 2 * rounds)
        assert leader.holds_lease
        assert leader.lease_expires_at <= anyio.current_time() + leader.config.lease_duration
        assert cluster.agreed_leader() == elected
