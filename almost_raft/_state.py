"""``RaftElectionState``: configuration checks, the node's view, ``status()`` and subscriptions."""

from __future__ import annotations

import math
import random
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

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
from ._storage import MemoryStorage

if TYPE_CHECKING:
    from typing_extensions import Self

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


@final
@dataclass(slots=True)
class DriverCounters:
    """Counters kept by the driver; each only grows."""

    messages_received: int = 0
    messages_sent: int = 0
    messages_rejected: int = 0
    messages_dropped: int = 0
    send_failures: int = 0
    received_by_kind: dict[str, int] = field(default_factory=dict)
    sent_by_kind: dict[str, int] = field(default_factory=dict)
    rejected_by_kind: dict[str, int] = field(default_factory=dict)
    dropped_by_kind: dict[str, int] = field(default_factory=dict)
    send_failures_by_peer: dict[NodeId, int] = field(default_factory=dict)


def bump(counts: dict[str, int], key: str) -> None:
    """Add one to ``counts[key]``."""
    counts[key] = counts.get(key, 0) + 1


def _merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in b}


@final
class Subscription:
    """A stream of ``LeaderChanged`` events from one node.

    Iterate it with ``async for``; it starts with the view current at
    subscription time and ends when the node's election ends.  It never
    blocks the election: when the reader falls behind by more than
    ``buffer`` events, the oldest are dropped, so the reader may miss
    intermediate views but always ends with the latest.
    """

    __slots__ = ("_buffer", "_closed", "_owner", "_waiter", "missed")

    def __init__(self, owner: RaftElectionState, buffer: int) -> None:
        self._owner = owner
        self._buffer: deque[LeaderChanged] = deque(maxlen=buffer)
        self._closed = False
        self._waiter: anyio.Event | None = None
        self.missed = 0
        """How many events were dropped because the reader was behind."""

    def _push(self, event: LeaderChanged) -> None:
        if self._closed:
            return
        if len(self._buffer) == self._buffer.maxlen:
            self.missed += 1
        self._buffer.append(event)
        self._wake()

    def _end(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def receive_nowait(self) -> LeaderChanged:
        """Return the next event without waiting.

        Raises:
            anyio.WouldBlock: no event is waiting.
            anyio.EndOfStream: the election ended and every event was read.
        """
        if self._buffer:
            return self._buffer.popleft()
        if self._closed:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def receive(self) -> LeaderChanged:
        """Wait for the next event.

        Raises:
            anyio.EndOfStream: the election ended (or ``close`` was called)
                and every event was read.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                event = self.receive_nowait()
            except anyio.WouldBlock:
                if self._waiter is None:
                    self._waiter = anyio.Event()
                await self._waiter.wait()
            else:
                # A checkpoint that cannot lose the event to a cancellation.
                await anyio.lowlevel.cancel_shielded_checkpoint()
                return event

    def close(self) -> None:
        """Stop receiving events; what is buffered can still be read."""
        self._owner._subscriptions.discard(self)
        self._end()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> LeaderChanged:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@final
class RaftElectionState:
    """The configuration and the live state of one node's election.

    Build it with ``RaftElectionState.init(...)``, run it with
    ``raft_election(state)``, read it at any time.  One state runs once.
    """

    def __init__(
        self,
        *,
        config: Config,
        message_timeout: float,
        nodes: dict[NodeId, Node],
        storage: Storage,
        rng: random.Random,
        inbox: MemoryObjectReceiveStream[ControlMessage | Message],
    ) -> None:
        # Use RaftElectionState.init(); this constructor does no checks.
        self.config = config
        self.message_timeout = message_timeout
        self.storage = storage
        self.rng = rng
        self._nodes = nodes
        self._inbox = inbox
        # A state that never runs must not leave its stream unclosed (anyio
        # warns about that when it is collected).
        weakref.finalize(self, inbox.close)
        self._core: Election | None = None
        self._clock: Callable[[], float] | None = None
        self._started = False
        self._finished = False
        self._subscriptions: set[Subscription] = set()
        self._driver_counters = DriverCounters()
        # Requests from the application that bypass ``control`` (see
        # transfer_leadership, pause_candidacy); the driver wakes up for them.
        self._commands: deque[TransferLeadership | bool] = deque()
        self._wake_driver: Callable[[], None] | None = None
        self._paused_at_start = False
        self._changed: anyio.Event | None = None

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

        Returns:
            ``(state, control)``: run ``raft_election(state)``, and send peer
            messages and ``AddNode``/``RemoveNode``/``TransferLeadership`` into
            ``control``.  Closing ``control`` ends the election.

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
        )
        storage = MemoryStorage() if storage is None else check_storage(storage)
        if rng is None:
            rng = random.Random()
        elif not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
        assert config.message_timeout is not None
        send, receive = anyio.create_memory_object_stream[ControlMessage | Message](_CONTROL_BUFFER)
        state = cls(
            config=config,
            message_timeout=config.message_timeout,
            nodes=peers,
            storage=storage,
            rng=rng,
            inbox=receive,
        )
        return state, send

    # ------------------------------------------------------------------ view

    def __repr__(self) -> str:
        return f"<RaftElectionState {self.self_id!r} {self.role.value} term={self.term} leader={self.leader_id!r}>"

    @property
    def self_id(self) -> NodeId:
        """This node's id."""
        return self.config.self_id

    @property
    def role(self) -> Role:
        """The current role (``FOLLOWER`` before the election starts)."""
        if self._finished:
            return Role.TERMINATED
        return Role.FOLLOWER if self._core is None else self._core.role

    @property
    def term(self) -> int:
        """The current term (0 before the election has loaded its storage)."""
        return 0 if self._core is None else self._core.term

    @property
    def leader_id(self) -> NodeId | None:
        """The leader this node knows of for its term, or ``None``."""
        if self._core is None or self._finished:
            return None
        return self._core.leader_id

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
        if self._core is None or self._clock is None or self._finished:
            return False
        return self._core.holds_lease(self._clock())

    @property
    def lease_expires_at(self) -> float:
        """When the current lease ends, on ``anyio.current_time()``'s clock (``-inf``: no lease)."""
        if self._core is None or self._finished:
            return -math.inf
        return self._core.lease_expires_at

    @property
    def peer_ids(self) -> tuple[NodeId, ...]:
        """The peers in this node's view."""
        if self._core is not None:
            return self._core.peer_ids
        return tuple(self._nodes)

    @property
    def core(self) -> Election | None:
        """The election core while the election runs (for tests and tools)."""
        return self._core

    def status(self) -> Status:
        """Return a snapshot of the role, term, leader, lease and counters."""
        core = self._core
        counters = core.counters if core is not None else CoreCounters()
        driver = self._driver_counters
        now = self._clock() if self._clock is not None and not self._finished else None
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
            peer_last_ack=last_ack,
            leader_contact_age=contact_age,
            candidacy_paused=core.candidacy_paused if core is not None else self._paused_at_start,
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
        sub = Subscription(self, buffer)
        sub._push(LeaderChanged(self.term, self.leader_id))
        if self._finished:
            sub._end()
        else:
            self._subscriptions.add(sub)
        return sub

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
        if not self._started or self._finished:
            raise RuntimeError(f"the election of node {self.self_id!r} is not running")
        self._submit(request)

    def pause_candidacy(self) -> None:
        """Keep this node from standing for election, e.g. while it is drained.

        It still votes and follows.  If it leads, it hands leadership over at
        once.  Allowed before the election starts.
        """
        if not self._started:
            self._paused_at_start = True
        elif not self._finished:
            self._submit(True)

    def resume_candidacy(self) -> None:
        """Undo ``pause_candidacy``."""
        if not self._started:
            self._paused_at_start = False
        elif not self._finished:
            self._submit(False)

    def _submit(self, command: TransferLeadership | bool) -> None:
        self._commands.append(command)
        if self._wake_driver is not None:
            self._wake_driver()

    async def wait_changed(self) -> None:
        """Wait until the role, term, leader or lease of this node changes, or the election ends."""
        if self._finished:
            await anyio.lowlevel.checkpoint()
            return
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    # ------------------------------------------------------- driver's hooks

    def _notify_changed(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _claim(self) -> None:
        if self._started:
            raise RuntimeError(f"the election of node {self.self_id!r} has already been started; build a new state")
        self._started = True

    def _attach(self, core: Election, clock: Callable[[], float]) -> None:
        self._core = core
        self._clock = clock

    def _publish(self, event: LeaderChanged) -> None:
        for sub in list(self._subscriptions):
            sub._push(event)

    def _finish(self) -> None:
        self._finished = True
        self._wake_driver = None
        self._notify_changed()
        self._inbox.close()
        for sub in list(self._subscriptions):
            sub._end()
        self._subscriptions.clear()
