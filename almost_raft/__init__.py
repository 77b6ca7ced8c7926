"""almost_raft: leader election with the Raft election rules, and nothing else.

The application brings the transport (a ``Node`` per peer, and every message
from the network fed into ``control``); the library elects one leader, with
pre-vote, check-quorum, leases and leadership transfer.  Runs on asyncio and
trio through anyio.
"""

from __future__ import annotations

from ._driver import raft_election
from ._messages import (
    AddNode,
    ControlMessage,
    Heartbeat,
    HeartbeatResponse,
    LeaderChanged,
    Message,
    RemoveNode,
    RequestVote,
    Role,
    TimeoutNow,
    TransferLeadership,
    VoteResponse,
)
from ._protocols import HardState, Node, Storage
from ._state import RaftElectionState, Status
from ._storage import FileStorage, MemoryStorage

__version__ = "0.1.0"

__all__ = (
    "AddNode",
    "ControlMessage",
    "FileStorage",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "LeaderChanged",
    "MemoryStorage",
    "Message",
    "Node",
    "RaftElectionState",
    "RemoveNode",
    "RequestVote",
    "Role",
    "Status",
    "Storage",
    "TimeoutNow",
    "TransferLeadership",
    "VoteResponse",
    "raft_election",
)
