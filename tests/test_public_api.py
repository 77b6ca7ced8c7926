"""The public names of ``almost_raft`` are exactly those the specification and the README document."""

from __future__ import annotations

import almost_raft

PUBLIC_NAMES = {
    "Node",
    "RaftElectionState",
    "raft_election",
    "RequestVote",
    "VoteResponse",
    "Heartbeat",
    "HeartbeatResponse",
    "TimeoutNow",
    "AddNode",
    "RemoveNode",
    "TransferLeadership",
    "LeaderChanged",
    "Role",
    "Status",
    "Storage",
    "HardState",
    "MemoryStorage",
    "FileStorage",
    "Message",
    "ControlMessage",
}


def test_all_is_design_names() -> None:
    assert isinstance(almost_raft.__all__, tuple)
    assert set(almost_raft.__all__) == PUBLIC_NAMES
    assert len(almost_raft.__all__) == len(PUBLIC_NAMES)


def test_every_name_is_importable_and_documented() -> None:
    for name in almost_raft.__all__:
        obj = getattr(almost_raft, name)
        if name in {"Message", "ControlMessage"}:
            continue  # type aliases
        assert obj.__doc__, f"{name} has no docstring"


def test_role_members() -> None:
    assert [r.name for r in almost_raft.Role] == ["FOLLOWER", "CANDIDATE", "LEADER", "TERMINATED"]
