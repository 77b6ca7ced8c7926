"""Messages between peers, control messages, events and roles.

Every class here is a frozen, slotted dataclass that compares by value and
checks its fields in the constructor, so a message that exists is a message
that makes sense.  Bad values raise ``TypeError`` (wrong type) or
``ValueError`` (right type, impossible value) naming the field.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias, final

if TYPE_CHECKING:
    from ._protocols import Node

NodeId: TypeAlias = str | int
"""A node's identity: a ``str`` or an ``int`` (never a ``bool``)."""

WIRE_MAX_TERM: Final = 2**63 - 1
"""The largest term the TCP wire format carries (``transports/_wire.py``)."""

MAX_TERM: Final = 2**62
"""The largest term a node ever holds, sends, stores or accepts from a peer.

Half the wire's range: a node at ``MAX_TERM`` can still encode ``term + 1``,
and every term above it, up to ``WIRE_MAX_TERM``, is refused as bad input.
No honest run comes near it (one election per millisecond would take 146
million years); ``MAX_TERM_STEP`` keeps hostile input from pushing a cluster
there.  The argument is in ``docs/specification.md``, "Terms have no
dead end".
"""

MAX_TERM_STEP: Final = 2**16
"""How far one message can raise a node's term (``docs/specification.md``, "Terms have no dead end").

A message whose term lies further ahead moves the node only this far (as a
follower that knows no leader) and is then dropped as bad input; the next
message from the same source moves it on.  Honest term gaps are the number
of elections a node missed, far below this; reaching ``MAX_TERM`` from term 0
takes at least ``MAX_TERM // MAX_TERM_STEP`` (2**46) accepted messages.
"""


def _check_term(owner: str, field: str, value: object) -> None:
    if type(value) is bool or not isinstance(value, int):
        raise TypeError(f"{owner}.{field} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{owner}.{field} must be >= 0, got {value}")


def _check_node_id(owner: str, field: str, value: object) -> None:
    if type(value) is bool or not isinstance(value, (str, int)):
        raise TypeError(f"{owner}.{field} must be a str or an int node id, got {type(value).__name__}")


def _check_flag(owner: str, field: str, value: object) -> None:
    if type(value) is not bool:
        raise TypeError(f"{owner}.{field} must be a bool, got {type(value).__name__}")


def check_node_id(value: object, what: str = "node_id") -> None:
    """Raise ``TypeError`` unless *value* is a valid node id (``str`` or ``int``, not ``bool``)."""
    if type(value) is bool or not isinstance(value, (str, int)):
        raise TypeError(f"{what} must be a str or an int, got {type(value).__name__}")


@final
@dataclass(frozen=True, slots=True)
class RequestVote:
    """A candidate asks for a vote, or for a pre-vote.

    Attributes:
        term: for a real vote, the candidate's term; for a pre-vote, the term
            the candidate would stand in (its own term + 1).
        candidate_id: the id of the node asking.
        pre_vote: ``True`` for a pre-vote: a question that changes nothing on
            the receiver ("would you vote for me in ``term``?").
        transfer: ``True`` when the candidate stands because the leader sent
            it ``TimeoutNow``; such a request overrides leader stickiness.
    """

    term: int
    candidate_id: NodeId
    pre_vote: bool = False
    transfer: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (raises ``TypeError``/``ValueError``)."""
        _check_term("RequestVote", "term", self.term)
        _check_node_id("RequestVote", "candidate_id", self.candidate_id)
        _check_flag("RequestVote", "pre_vote", self.pre_vote)
        _check_flag("RequestVote", "transfer", self.transfer)
        if self.pre_vote and self.term == 0:
            raise ValueError("RequestVote.term must be >= 1 for a pre-vote (it names the next term)")

    @property
    def sender(self) -> NodeId:
        """The id of the node that sent this message."""
        return self.candidate_id


@final
@dataclass(frozen=True, slots=True)
class VoteResponse:
    """A peer's answer to ``RequestVote``.

    Attributes:
        term: the requested term when ``granted``; the voter's own term when
            refused, so that a stale candidate learns the newer term.
        voter_id: the id of the node answering; votes are counted by distinct
            ``voter_id``.
        granted: whether the (pre-)vote is given.
        pre_vote: ``True`` when this answers a pre-vote.
    """

    term: int
    voter_id: NodeId
    granted: bool
    pre_vote: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (raises ``TypeError``/``ValueError``)."""
        _check_term("VoteResponse", "term", self.term)
        _check_node_id("VoteResponse", "voter_id", self.voter_id)
        _check_flag("VoteResponse", "granted", self.granted)
        _check_flag("VoteResponse", "pre_vote", self.pre_vote)

    @property
    def sender(self) -> NodeId:
        """The id of the node that sent this message."""
        return self.voter_id


@final
@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent by the leader to every peer every ``heartbeat_interval``.

    Attributes:
        term: the leader's term.
        leader_id: the id of the leader.
        seq: the number of the heartbeat round, counted from 1 in each term;
            echoed in ``HeartbeatResponse`` so the leader knows which round a
            follower acknowledged (the lease runs from that round's send time).
        successor: the peer the leader names to stand first if it disappears
            (the designated successor), or ``None``.  The named peer stands
            exactly ``T`` after the last heartbeat it accepted instead of
            after a random timeout (docs/specification.md, "Designated
            successor").  Never the leader itself.
    """

    term: int
    leader_id: NodeId
    seq: int = 0
    successor: NodeId | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (raises ``TypeError``/``ValueError``)."""
        _check_term("Heartbeat", "term", self.term)
        _check_node_id("Heartbeat", "leader_id", self.leader_id)
        _check_term("Heartbeat", "seq", self.seq)
        if self.successor is not None:
            _check_node_id("Heartbeat", "successor", self.successor)
            if self.successor == self.leader_id:
                raise ValueError("Heartbeat.successor must not be the leader itself")

    @property
    def sender(self) -> NodeId:
        """The id of the node that sent this message."""
        return self.leader_id


@final
@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    """A follower's answer to ``Heartbeat``.

    Attributes:
        term: the follower's term (after handling the heartbeat).  A stale
            leader learns of a newer term from it.
        follower_id: the id of the node answering.
        success: ``True`` when the follower accepted the heartbeat (same term);
            ``False`` when it refused a heartbeat of an older term.
        seq: the ``seq`` of the heartbeat being answered.
    """

    term: int
    follower_id: NodeId
    success: bool
    seq: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (raises ``TypeError``/``ValueError``)."""
        _check_term("HeartbeatResponse", "term", self.term)
        _check_node_id("HeartbeatResponse", "follower_id", self.follower_id)
        _check_flag("HeartbeatResponse", "success", self.success)
        _check_term("HeartbeatResponse", "seq", self.seq)

    @property
    def sender(self) -> NodeId:
        """The id of the node that sent this message."""
        return self.follower_id


@final
@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the leader tells the target to stand at once.

    Attributes:
        term: the leader's term.
        leader_id: the id of the leader handing over.
    """

    term: int
    leader_id: NodeId

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (raises ``TypeError``/``ValueError``)."""
        _check_term("TimeoutNow", "term", self.term)
        _check_node_id("TimeoutNow", "leader_id", self.leader_id)

    @property
    def sender(self) -> NodeId:
        """The id of the node that sent this message."""
        return self.leader_id


@final
@dataclass(frozen=True, slots=True)
class AddNode:
    """Control: add a peer, or replace the handle of the peer with the same id.

    Attributes:
        node: the ``Node`` to add; its ``node_id`` must be a ``str`` or ``int``.
    """

    node: Node

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (raises ``TypeError``)."""
        node_id = getattr(self.node, "node_id", None)
        _check_node_id("AddNode", "node.node_id", node_id)
        if not callable(getattr(self.node, "send_message", None)):
            raise TypeError("AddNode.node must have an async send_message(message) method")


@final
@dataclass(frozen=True, slots=True)
class RemoveNode:
    """Control: remove a peer; removing this node's own id ends its election.

    Attributes:
        node_id: the id of the node to remove.
    """

    node_id: NodeId

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (raises ``TypeError``)."""
        _check_node_id("RemoveNode", "node_id", self.node_id)


@final
@dataclass(frozen=True, slots=True)
class TransferLeadership:
    """Control: a leader hands leadership over.

    Attributes:
        target_id: the peer to hand over to; ``None`` picks the peer that
            acknowledged a heartbeat most recently.  Ignored by a non-leader,
            and when it names an unknown id or the leader itself.
    """

    target_id: NodeId | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (raises ``TypeError``)."""
        if self.target_id is not None:
            _check_node_id("TransferLeadership", "target_id", self.target_id)


@final
@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    """Control, sent by a transport: the connection to a peer was closed or reset by the peer's kernel.

    A transport that sees its connection to a peer end (end of file, or a
    reset: the peer's process exited or died) sends this into the node's
    ``control``.  It is a hint, never a vote: the election uses it to start
    the designated successor's pre-vote at once when the disconnected peer
    is its leader (voters still answer only when their own stickiness
    window ends, so the lease is never cut short), to name another
    successor when a leader loses the one it named, and to retry a
    leadership transfer whose target went away.  A notice about a live peer
    costs at most a pre-vote round.  Exported from ``almost_raft.transports``
    (docs/specification.md, "Connection closed").

    Attributes:
        node_id: the peer whose connection closed; an id outside the view
            (or this node's own) is refused and counted.
    """

    node_id: NodeId

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (raises ``TypeError``)."""
        _check_node_id("PeerDisconnected", "node_id", self.node_id)


@final
@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """Event: this node's view of the leader changed.

    Attributes:
        term: the term the view belongs to.
        leader_id: the leader of ``term``, or ``None`` when this node knows of
            no leader (it never names a node that did not win ``term``).
    """

    term: int
    leader_id: NodeId | None

    def __post_init__(self) -> None:
        _check_term("LeaderChanged", "term", self.term)
        if self.leader_id is not None:
            _check_node_id("LeaderChanged", "leader_id", self.leader_id)


@final
class Role(enum.Enum):
    """The role of a node."""

    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"
    TERMINATED = "terminated"
    """The node removed itself, or ``control`` was closed; its election is over."""


Message: TypeAlias = RequestVote | VoteResponse | Heartbeat | HeartbeatResponse | TimeoutNow
"""The messages peers exchange."""

ControlMessage: TypeAlias = AddNode | RemoveNode | TransferLeadership | PeerDisconnected
"""The messages an application (or its transport: ``PeerDisconnected``) sends into ``control`` to steer one node."""

MESSAGE_TYPES: tuple[type, ...] = (RequestVote, VoteResponse, Heartbeat, HeartbeatResponse, TimeoutNow)
CONTROL_TYPES: tuple[type, ...] = (AddNode, RemoveNode, TransferLeadership, PeerDisconnected)


def check_seconds(name: str, value: object) -> float:
    """Return *value* as a float number of seconds, or raise for a non-positive or non-finite one."""
    if type(value) is bool or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)
