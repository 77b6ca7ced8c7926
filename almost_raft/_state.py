"""``RaftElectionState``: configuration checks, the node's view, ``status()`` and subscriptions."""

from __future__ import annotations

import math
import random
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import final

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ._config import DEFAULT_CLOCK_DRIFT, DEFAULT_ELECTION_TIMEOUT, Config, check_nodes, check_storage, make_config
from ._core import CoreCounters, Election
from ._messages import (
    ControlMessage,
    LeaderChanged,
    Message,
    NodeId,
    Role,
    TransferLeadership,
)
from ._protocols import Node, Storage
from ._runtime import PauseCandidacy, Runtime, Subscription
from ._storage import MemoryStorage

__all__ = ("RaftElectionState", "Status", "Subscription")

_CONTROL_BUFFER = 1024


@final
@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of one node, from ``RaftElectionState.status()``.

    Attributes:
        self_id: this node's id.
        role: its role.
        term: its current term.
        leader_id: the leader it knows of for ``term``, or ``None``.
        is_leader: ``role is Role.LEADER``.
        holds_lease: it leads under a valid lease at the time of the snapshot.
        lease_remaining: seconds left on the lease (0.0 without one).
        voted_for: the candidate it voted for in ``term``, or ``None``.
        peer_ids: the peers in its view.
        min_nodes: no election while the cluster (this node included) is smaller.
        max_nodes: the cluster (this node included) never grows beyond this.
        peer_last_ack: for a leader, seconds since each peer last acknowledged
            a heartbeat (``None``: never in this term); empty otherwise.
        leader_contact_age: for a follower, seconds since it last accepted a
            heartbeat (``None``: never); ``None`` for a leader.
        candidacy_paused: ``pause_candidacy()`` is in force.
        elections_started: real elections started (term raised to stand).
        elections_won: elections won.
        elections_lost: election rounds that timed out without a win.
        pre_votes_started: pre-vote rounds started.
        votes_granted: votes and pre-votes this node granted.
        votes_refused: votes and pre-votes this node refused.
        pre_votes_refused: pre-votes this node refused.
        step_downs: times it stopped being leader.
        check_quorum_step_downs: step-downs because no quorum answered within T.
        transfers_started: ``TimeoutNow`` messages sent.
        transfer_retries: ``TimeoutNow`` sent to the next-best peer because a
            transfer's target did not stand in time.
        pre_votes_held: pre-votes held until this node's stickiness window ended.
        late_timers: timers that fired more than ``T / 2`` late and were let go.
        disconnects: ``PeerDisconnected`` notices taken (ids in the view).
        named_successor: the designated successor this node knows: named in
            the last heartbeat it accepted, or (a leader) named in its last
            round; ``None`` when none.
        messages_received: peer messages taken from ``control``.
        messages_sent: messages handed to ``Node.send_message`` without error.
        messages_rejected: bad input dropped (wrong type, unknown sender,
            nonsense fields, impossible control requests).
        messages_dropped: outgoing messages dropped because a peer's queue was full.
        send_failures: ``send_message`` calls that raised or timed out.
        received_by_kind: ``messages_received`` by message class name.
        sent_by_kind: ``messages_sent`` by message class name.
        rejected_by_kind: ``messages_rejected`` by class name of the bad input.
        dropped_by_kind: ``messages_dropped`` by message class name.
        send_failures_by_peer: ``send_failures`` by peer id.
    """

    self_id: NodeId
    role: Role
    term: int
    leader_id: NodeId | None
    is_leader: bool
    holds_lease: bool
    lease_remaining: float
    voted_for: NodeId | None
    peer_ids: tuple[NodeId, ...]
    min_nodes: int
    max_nodes: int
    peer_last_ack: tuple[tuple[NodeId, float | None], ...]
    leader_contact_age: float | None
    candidacy_paused: bool
    elections_started: int
    elections_won: int
    elections_lost: int
    pre_votes_started: int
    votes_granted: int
    votes_refused: int
    pre_votes_refused: int
    step_downs: int
    check_quorum_step_downs: int
    transfers_started: int
    transfer_retries: int
    pre_votes_held: int
    late_timers: int
    disconnects: int
    named_successor: NodeId | None
    messages_received: int
    messages_sent: int
    messages_rejected: int
    messages_dropped: int
    send_failures: int
    received_by_kind: dict[str, int]
    sent_by_kind: dict[str, int]
    rejected_by_kind: dict[str, int]
    dropped_by_kind: dict[str, int]
    send_failures_by_peer: dict[NodeId, int]

    def as_dict(self) -> dict[str, object]:
        """The snapshot as a plain dict (role as its string value), for any metrics system."""
        out: dict[str, object] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["role"] = self.role.value
        out["peer_ids"] = list(self.peer_ids)
        out["peer_last_ack"] = {str(k): v for k, v in self.peer_last_ack}
        out["send_failures_by_peer"] = {str(k): v for k, v in self.send_failures_by_peer.items()}
        for name in ("received_by_kind", "sent_by_kind", "rejected_by_kind", "dropped_by_kind"):
            out[name] = dict(getattr(self, name))
        return out


def _merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in b}


@final
class RaftElectionState:
    """The configuration and the live state of one node's election.

    Build it with ``RaftElectionState.init(...)``, run it with
    ``raft_election(state)``, read it at any time.  One state runs once.
    """

    def __init__(self, runtime: Runtime) -> None:
        # Use RaftElectionState.init(); this constructor does no checks.
        self._runtime = runtime
        # A state that never runs must not leave its stream unclosed (anyio
        # warns about that when it is collected).
        weakref.finalize(self, runtime.inbox.close)

    @classmethod
    def init(
        cls,
        self_id: NodeId,
        *,
        election_timeout: float = DEFAULT_ELECTION_TIMEOUT,
        heartbeat_interval: float | None = None,
        message_timeout: float | None = None,
        nodes: Iterable[Node] = (),
        max_nodes: int = 1024,
        min_nodes: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        storage: Storage | None = None,
        election_timeout_max: float | None = None,
        rng: random.Random | None = None,
        clock_drift: float = DEFAULT_CLOCK_DRIFT,
        successor: bool = True,
        overload_backoff: bool = True,
    ) -> tuple[RaftElectionState, MemoryObjectSendStream[ControlMessage | Message]]:
        """Check a configuration and build a node's state and its ``control`` stream.

        All times are in seconds.  The defaults follow ``election_timeout``
        (``T``), so giving ``T`` alone is enough: ``init("a",
        election_timeout=0.05)`` heartbeats every ``T / 3``.

        Args:
            self_id: this node's id (``str`` or ``int``).
            election_timeout: ``T`` in seconds: a node that hears no leader for
                a timeout drawn from ``[T, election_timeout_max)`` stands.
            heartbeat_interval: seconds between a leader's heartbeats (default
                ``T / 3``, as ``python -m almost_raft``); at most ``T / 2``.
            message_timeout: bound in seconds on each ``Node.send_message`` call
                (default: the heartbeat interval); at most ``T``.
            nodes: the peers known now (``Node`` objects, not their ids; not this node).
            max_nodes: the cluster, this node included, never grows beyond this.
            min_nodes: no election while the cluster, this node included, is
                smaller; quorums count ``max(size, min_nodes)``.  Set it to the
                intended cluster size for a safe start-up.
            pre_vote: ask for pre-votes before raising the term.
            check_quorum: a leader without a quorum of acknowledgements within
                ``T`` steps down.
            storage: where ``term`` and ``voted_for`` are saved (default:
                memory); its ``load`` and ``save`` must be ``async def``.
            election_timeout_max: upper end of the timeout range (default ``2 * T``;
                equal to ``T`` means no randomness).
            rng: the only source of randomness (seed it to replay a run).
            clock_drift: the largest relative rate difference between two
                nodes' clocks; the lease lasts ``T * (1 - d) / (1 + d)``.
            successor: a leader names a designated successor in its
                heartbeats, which stands exactly ``T`` after the last one it
                accepted instead of after a random timeout (faster failover;
                docs/specification.md, "Designated successor").
            overload_backoff: back elections off when this process is
                overloaded (docs/specification.md, "Overload").

        Returns:
            ``(state, control)``: run ``raft_election(state)``, and send peer
            messages and ``AddNode``/``RemoveNode``/``TransferLeadership`` into
            ``control`` (and, from a transport, ``PeerDisconnected``).  Closing ``control`` ends the election.

        Raises:
            TypeError: a value of the wrong type: for example ids instead of
                ``Node`` objects in ``nodes``, or a ``Node`` or ``Storage``
                whose methods are plain ``def`` instead of ``async def``.
            ValueError: a configuration that cannot work.

        An election timeout of more than a minute is accepted with a warning
        on the ``almost_raft`` logger: it is almost surely milliseconds
        written as seconds.
        """
        peers = check_nodes(nodes)
        config = make_config(
            self_id,
            election_timeout=election_timeout,
            election_timeout_max=election_timeout_max,
            heartbeat_interval=heartbeat_interval,
            message_timeout=message_timeout,
            min_nodes=min_nodes,
            max_nodes=max_nodes,
            peer_ids=peers,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            clock_drift=clock_drift,
            successor=successor,
            overload_backoff=overload_backoff,
        )
        storage = MemoryStorage() if storage is None else check_storage(storage)
        if rng is None:
            rng = random.Random()
        elif not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
        assert config.message_timeout is not None
        send, receive = anyio.create_memory_object_stream[ControlMessage | Message](_CONTROL_BUFFER)
        runtime = Runtime(
            config=config, message_timeout=config.message_timeout, nodes=peers, storage=storage, rng=rng, inbox=receive
        )
        return cls(runtime), send

    # ------------------------------------------------------------------ view

    def __repr__(self) -> str:
        return f"<RaftElectionState {self.self_id!r} {self.role.value} term={self.term} leader={self.leader_id!r}>"

    @property
    def runtime(self) -> Runtime:
        """The live parts of the election, for the code that runs it (``raft_election``, ``ElectionHost``).

        Applications do not need it: everything they read or ask for has a
        method or property of its own here.
        """
        return self._runtime

    @property
    def config(self) -> Config:
        """The checked configuration."""
        return self._runtime.config

    @property
    def storage(self) -> Storage:
        """Where ``term`` and ``voted_for`` are saved."""
        return self._runtime.storage

    @property
    def rng(self) -> random.Random:
        """The election's only source of randomness."""
        return self._runtime.rng

    @property
    def message_timeout(self) -> float:
        """The bound in seconds on each ``Node.send_message`` call."""
        return self._runtime.message_timeout

    @property
    def self_id(self) -> NodeId:
        """This node's id."""
        return self._runtime.config.self_id

    @property
    def role(self) -> Role:
        """The current role (``FOLLOWER`` before the election starts)."""
        runtime = self._runtime
        if runtime.finished:
            return Role.TERMINATED
        return Role.FOLLOWER if runtime.core is None else runtime.core.role

    @property
    def term(self) -> int:
        """The current term (0 before the election has loaded its storage)."""
        return self._runtime.term

    @property
    def leader_id(self) -> NodeId | None:
        """The leader this node knows of for its term, or ``None``."""
        runtime = self._runtime
        if runtime.core is None or runtime.finished:
            return None
        return runtime.core.leader_id

    @property
    def is_leader(self) -> bool:
        """Whether this node is the leader of its term."""
        return self.role is Role.LEADER

    @property
    def holds_lease(self) -> bool:
        """Whether this node leads under a valid lease now.

        While it holds, no other node can be elected: rely on it, not on
        ``is_leader``, for work that must never run twice at once.  Read it
        from inside the event loop that runs the election.
        """
        runtime = self._runtime
        if runtime.core is None or runtime.clock is None or runtime.finished:
            return False
        return runtime.core.holds_lease(runtime.clock())

    @property
    def lease_expires_at(self) -> float:
        """When the current lease ends, on ``anyio.current_time()``'s clock (``-inf``: no lease)."""
        runtime = self._runtime
        if runtime.core is None or runtime.finished:
            return -math.inf
        return runtime.core.lease_expires_at

    @property
    def peer_ids(self) -> tuple[NodeId, ...]:
        """The peers in this node's view."""
        runtime = self._runtime
        if runtime.core is not None:
            return runtime.core.peer_ids
        return tuple(runtime.nodes)

    @property
    def core(self) -> Election | None:
        """The election core while the election runs (for tests and tools)."""
        return self._runtime.core

    def status(self) -> Status:
        """Return a snapshot of the role, term, leader, lease and counters."""
        runtime = self._runtime
        core = runtime.core
        counters = core.counters if core is not None else CoreCounters()
        driver = runtime.counters
        now = runtime.clock() if runtime.clock is not None and not runtime.finished else None
        lease_left = 0.0
        last_ack: tuple[tuple[NodeId, float | None], ...] = ()
        contact_age: float | None = None
        if core is not None and now is not None:
            if core.role is Role.FOLLOWER and core.last_leader_contact > -math.inf:
                contact_age = now - core.last_leader_contact
            lease_left = max(0.0, core.lease_expires_at - now) if core.holds_lease(now) else 0.0
            if core.role is Role.LEADER:
                acks = ((p, core.last_ack_at(p)) for p in core.peer_ids)
                last_ack = tuple((p, None if at is None else now - at) for p, at in acks)
        return Status(
            self_id=self.self_id,
            role=self.role,
            term=self.term,
            leader_id=self.leader_id,
            is_leader=self.is_leader,
            holds_lease=lease_left > 0.0,
            lease_remaining=lease_left,
            voted_for=None if core is None else core.voted_for,
            peer_ids=self.peer_ids,
            min_nodes=runtime.config.min_nodes,
            max_nodes=runtime.config.max_nodes,
            peer_last_ack=last_ack,
            leader_contact_age=contact_age,
            candidacy_paused=core.candidacy_paused if core is not None else runtime.paused_at_start,
            elections_started=counters.elections_started,
            elections_won=counters.elections_won,
            elections_lost=counters.elections_lost,
            pre_votes_started=counters.pre_votes_started,
            votes_granted=counters.votes_granted,
            votes_refused=counters.votes_refused,
            pre_votes_refused=counters.pre_votes_refused,
            step_downs=counters.step_downs,
            check_quorum_step_downs=counters.check_quorum_step_downs,
            transfers_started=counters.transfers_started,
            transfer_retries=counters.transfer_retries,
            pre_votes_held=counters.pre_votes_held,
            late_timers=counters.late_timers,
            disconnects=counters.disconnects,
            named_successor=None if core is None else core.named_successor,
            messages_received=driver.messages_received,
            messages_sent=driver.messages_sent,
            messages_rejected=driver.messages_rejected + counters.messages_rejected,
            messages_dropped=driver.messages_dropped,
            send_failures=driver.send_failures,
            received_by_kind=dict(driver.received_by_kind),
            sent_by_kind=dict(driver.sent_by_kind),
            rejected_by_kind={
                **counters.rejected_by_kind,
                **_merge(counters.rejected_by_kind, driver.rejected_by_kind),
            },
            dropped_by_kind=dict(driver.dropped_by_kind),
            send_failures_by_peer=dict(driver.send_failures_by_peer),
        )

    def subscribe(self, buffer: int = 16) -> Subscription:
        """Return a stream of ``LeaderChanged`` events, starting with the current view.

        Args:
            buffer: how many unread events to keep; beyond it the oldest are
                dropped, so a slow reader still ends with the latest view.

        Raises:
            ValueError: ``buffer`` is below 1.
        """
        if type(buffer) is bool or not isinstance(buffer, int):
            raise TypeError(f"buffer must be an int, got {type(buffer).__name__}")
        if buffer < 1:
            raise ValueError(f"buffer must be >= 1, got {buffer}")
        return self._runtime.subscribe(buffer, LeaderChanged(self.term, self.leader_id))

    # ------------------------------------------------------------- requests

    def transfer_leadership(self, target_id: NodeId | None = None) -> None:
        """Ask this node, if it leads, to hand leadership to *target_id*.

        The same as sending ``TransferLeadership(target_id)`` into ``control``,
        without needing ``control``; it does not wait.  ``None`` picks the peer
        that acknowledged most recently.

        Raises:
            RuntimeError: the election is not running.
        """
        request = TransferLeadership(target_id)
        runtime = self._runtime
        if not runtime.started or runtime.finished:
            raise RuntimeError(f"the election of node {self.self_id!r} is not running")
        runtime.submit(request)

    def pause_candidacy(self) -> None:
        """Keep this node from standing for election, e.g. while it is drained.

        It still votes and follows.  If it leads, it hands leadership over at
        once.  Allowed before the election starts.
        """
        self._set_paused(True)

    def resume_candidacy(self) -> None:
        """Undo ``pause_candidacy``."""
        self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        runtime = self._runtime
        if runtime.core is None:
            runtime.paused_at_start = paused
        elif not runtime.finished:
            runtime.submit(PauseCandidacy(paused))

    async def wait_changed(self) -> None:
        """Wait until the role, term, leader or lease of this node changes, or the election ends."""
        await self._runtime.wait_changed()
