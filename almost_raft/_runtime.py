"""``Runtime``: the live parts of one node's election, and what every driver shares.

``RaftElectionState`` is what the application holds; its ``runtime`` is what
the code that runs the election works with: the core once it is built, the
peers' handles and their senders, the executor of the core's outputs, the
counters, the subscriptions and the requests made through the state.  Two
drivers use it, and only through the methods below: ``raft_election`` (one
node per task, the default) and ``ElectionHost`` (many nodes in one task).

What lives here is the part both do the same way:

* ``handle``: check one input from ``control`` and hand it to the core;
* ``apply`` and ``save_pending``: feed the core's output to the ``Executor``
  (save, then send, then publish) and make the pending state durable;
* ``PeerSender``: one queue per peer, so that a slow peer never delays the
  election or the other peers;
* ``stop``: how an election ends (a leader hands over first).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ._core import Config, Election, Output, worth_logging
from ._executor import Executor
from ._messages import (
    MESSAGE_TYPES,
    AddNode,
    ControlMessage,
    LeaderChanged,
    Message,
    NodeId,
    PeerDisconnected,
    RemoveNode,
    Role,
    TransferLeadership,
)
from ._protocols import HardState, Node, Storage

if TYPE_CHECKING:
    import random

    from typing_extensions import Self

logger = logging.getLogger("almost_raft")

PEER_QUEUE_SIZE: Final = 64
"""Outgoing messages kept per peer; when full, the oldest is dropped (a newer one supersedes it)."""

CLOSED: Final = object()
"""Put in a node's input after the last item of ``control``: ``control`` was closed."""

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]], str], object]
"""Starts a task: ``spawn(async_fn, name)``."""


@final
@dataclass(frozen=True, slots=True)
class PauseCandidacy:
    """A request from ``pause_candidacy``/``resume_candidacy``: keep this node from standing, or not."""

    paused: bool


Command = TransferLeadership | PauseCandidacy
"""A request made through the state's methods rather than through ``control``."""


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

    def __init__(self, owner: Runtime, buffer: int) -> None:
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
        self._owner.subscriptions.discard(self)
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
class PeerSender:
    """Sends one peer's messages in order, apart from the election loop.

    ``send`` never waits.  When the peer's ``Node`` has the optional
    ``send_message_nowait`` and nothing is queued, the message is handed to it
    at once; otherwise it is queued (the oldest dropped beyond
    ``PEER_QUEUE_SIZE``) for this peer's task, started on the first message
    that needs it, which awaits ``send_message`` under ``message_timeout``.
    Whatever a ``Node`` raises is a lost message, counted and logged, never
    an error of the election.
    """

    __slots__ = (
        "_closed",
        "_failing",
        "_nowait",
        "_nowait_node",
        "_queue",
        "_runtime",
        "_sending",
        "_waiter",
        "done",
        "peer_id",
    )

    def __init__(self, runtime: Runtime, peer_id: NodeId) -> None:
        self._runtime = runtime
        self.peer_id = peer_id
        self._queue: deque[Message] = deque()
        self._waiter: anyio.Event | None = None
        self._sending = False
        self._closed = False
        self._failing = False
        self._nowait_node: object = None
        self._nowait: Callable[[Message], object] | None = None
        self.done: anyio.Event | None = None
        """Set when this peer's task has ended (``None``: it never started)."""

    def send(self, message: Message) -> None:
        """Send *message* to the peer without waiting (or queue it)."""
        if not self._queue and not self._sending and self._send_nowait(message):
            return
        if len(self._queue) >= PEER_QUEUE_SIZE:
            dropped = self._queue.popleft()
            counters = self._runtime.counters
            counters.messages_dropped += 1
            bump(counters.dropped_by_kind, type(dropped).__name__)
        self._queue.append(message)
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None
        elif self.done is None and self._runtime.spawn is not None:
            self.done = anyio.Event()
            self._runtime.spawn(self._run, f"almost_raft sender {self._runtime.config.self_id!r}->{self.peer_id!r}")

    def _send_nowait(self, message: Message) -> bool:
        """Hand *message* to ``Node.send_message_nowait``; ``False``: it must go through ``send_message``."""
        node = self._runtime.nodes.get(self.peer_id)
        if node is None:
            return True  # removed meanwhile: the message is lost, as from the queue
        if node is not self._nowait_node:  # looked up once per handle, not per message
            self._nowait_node = node
            self._nowait = getattr(node, "send_message_nowait", None)
        send_nowait = self._nowait
        if send_nowait is None:
            return False
        try:
            send_nowait(message)
        except anyio.WouldBlock:
            return False
        except Exception as exc:  # a Node's failure is a lost message, never ours
            self._record(message, f"{type(exc).__name__}: {exc}")
        else:
            self._record(message, None)
        return True

    def close(self) -> None:
        """No more messages will come: the task sends what is queued, then ends."""
        self._closed = True
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    async def _run(self) -> None:
        assert self.done is not None
        try:
            while True:
                while not self._queue:
                    if self._closed:
                        return
                    self._waiter = anyio.Event()
                    await self._waiter.wait()
                await self._send(self._queue.popleft())
        finally:
            self._waiter = None
            self.done.set()

    async def flush(self) -> None:
        """Send what is queued from the caller's task (the peer's task has ended)."""
        while self._queue:
            await self._send(self._queue.popleft())

    async def _send(self, message: Message) -> None:
        runtime = self._runtime
        node = runtime.nodes.get(self.peer_id)
        if node is None:
            return
        self._sending = True
        error: str | None = None
        try:
            with anyio.move_on_after(runtime.message_timeout) as scope:
                try:
                    await node.send_message(message)
                except Exception as exc:  # a Node's failure is a lost message, never ours
                    error = f"{type(exc).__name__}: {exc}"
            if scope.cancelled_caught:
                error = f"no answer within message_timeout={runtime.message_timeout}s"
        finally:
            self._sending = False
        self._record(message, error)

    def _record(self, message: Message, error: str | None) -> None:
        runtime = self._runtime
        counters = runtime.counters
        if error is None:
            counters.messages_sent += 1
            bump(counters.sent_by_kind, type(message).__name__)
            if self._failing:
                self._failing = False
                logger.info(
                    "node %r term %d: sending to %r works again", runtime.config.self_id, runtime.term, self.peer_id
                )
            return
        counters.send_failures += 1
        counters.send_failures_by_peer[self.peer_id] = counters.send_failures_by_peer.get(self.peer_id, 0) + 1
        # Log once per change of state, not once per message.
        if not self._failing:
            self._failing = True
            logger.warning(
                "node %r term %d: sending %s to %r failed: %s",
                runtime.config.self_id,
                runtime.term,
                type(message).__name__,
                self.peer_id,
                error,
            )
        else:
            logger.debug(
                "node %r term %d: sending to %r failed again: %s",
                runtime.config.self_id,
                runtime.term,
                self.peer_id,
                error,
            )


Observer = Callable[[Election, tuple[LeaderChanged, ...], float], None]
"""Called with ``(core, events, now)`` whenever the node has carried out its outputs (none waits for a save).

For checkers (``LocalCluster(check_safety=True)``); an election never needs one.
"""


@final
class Runtime:
    """The live parts of one node's election: what a driver works with.

    Built by ``RaftElectionState.init`` and exposed as ``state.runtime``; an
    application does not need it.  A driver calls, in this order:
    ``claim()``; ``start(hard_state, now, clock)`` once the storage is loaded;
    then, for every input, ``handle``/``next_command``/``core.tick`` and
    ``apply`` (plus ``await save_pending()`` while ``must_save``); finally
    ``await stop()`` and ``finish()``, whatever ended the election.
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
        self.config = config
        self.message_timeout = message_timeout
        self.storage = storage
        self.rng = rng
        self.nodes = nodes
        """The peers' handles, by id (changed by ``AddNode``/``RemoveNode``)."""
        self.inbox = inbox
        """The receiving end of ``control``."""
        self.core: Election | None = None
        self.clock: Callable[[], float] | None = None
        self.executor: Executor | None = None
        self.senders: dict[NodeId, PeerSender] = {}
        self.spawn: Spawn | None = None
        """How senders start their task; ``None`` once the election is stopping."""
        self.counters = DriverCounters()
        self.commands: deque[Command] = deque()
        """Requests made through the state, handled before the next input."""
        self.on_request: Callable[[], None] | None = None
        """Called when a command arrives, to wake the driver."""
        self.observer: Observer | None = None
        self.before_hand_over: Callable[[], Awaitable[None]] | None = None
        """Awaited by ``stop`` before a leader hands over (``--exec`` stops its child there).

        It runs shielded, for at most as long as the lease still holds: once
        the lease has ended no other work can rely on it anyway.
        """
        self.subscriptions: set[Subscription] = set()
        self.started = False
        self.finished = False
        self.paused_at_start = False
        self._changed: anyio.Event | None = None
        self._view: tuple[object, ...] = ()
        self._observed_events: list[LeaderChanged] = []

    @property
    def term(self) -> int:
        """The current term (0 before the storage is loaded)."""
        return 0 if self.core is None else self.core.term

    # ------------------------------------------------------------ lifecycle

    def claim(self) -> None:
        """Mark the election as started.

        Raises:
            RuntimeError: it was started before (a state runs once).
        """
        if self.started:
            raise RuntimeError(
                f"the election of node {self.config.self_id!r} has already been started; build a new state"
            )
        self.started = True

    def start(self, hard_state: HardState | None, now: float, clock: Callable[[], float], spawn: Spawn) -> Election:
        """Build the core from the loaded *hard_state*; return it."""
        core = Election(self.config, peers=self.nodes, hard_state=hard_state, rng=self.rng, now=now)
        self.core = core
        self.clock = clock
        self.spawn = spawn
        self.executor = Executor(self._send, self._publish)
        self.senders = {peer_id: PeerSender(self, peer_id) for peer_id in core.peer_ids}
        self._view = self._snapshot()
        if self.paused_at_start:
            self.commands.appendleft(PauseCandidacy(True))
        logger.info(
            "node %r term %d: election started with peers %r (voted_for=%r)",
            self.config.self_id,
            core.term,
            list(core.peer_ids),
            core.voted_for,
        )
        return core

    async def drain(self) -> None:
        """Give the peers' tasks up to ``message_timeout`` to send what is queued (a graceful end)."""
        for sender in self.senders.values():
            sender.close()
        with anyio.move_on_after(self.message_timeout):
            for sender in self.senders.values():
                if sender.done is not None:
                    await sender.done.wait()

    async def stop(self) -> None:
        """End the election, shielded from cancellation; call it after the driver's tasks have ended.

        An election that ended by itself (``RemoveNode(self)``, ``control``
        closed) is already terminated.  Otherwise it was cancelled or failed:
        a leader hands over with ``TimeoutNow`` first, sent from this task
        within ``message_timeout``, so a rolling restart costs one round trip
        instead of an election timeout; any other node publishes that it
        knows of no leader.  If it stopped while a save was under way, the
        outputs waiting for it are dropped, unsent, and nothing more is sent
        or published: that state never became durable.
        """
        core = self.core
        executor = self.executor
        if core is None or executor is None or core.role is Role.TERMINATED:
            return
        with anyio.CancelScope(shield=True):
            self.spawn = None
            if core.role is Role.LEADER and self.before_hand_over is not None:
                # Leader-only work stops before TimeoutNow lets another node win at once.
                with anyio.move_on_after(max(0.0, core.lease_expires_at - anyio.current_time())):
                    await self.before_hand_over()
            out = core.shutdown(anyio.current_time())
            dropped = executor.discard()
            if dropped:
                # The core is ahead of its storage: nothing may leave that
                # reflects it, not even the last event.  (A leader never has
                # a save pending, so no hand-over is lost here.)
                logger.info(
                    "node %r term %d: stopped before its state was saved; %d outputs dropped unsent",
                    self.config.self_id,
                    core.term,
                    dropped,
                )
                return
            self.apply(out)
            with anyio.move_on_after(self.message_timeout):
                for sender in self.senders.values():
                    await sender.flush()

    def finish(self) -> None:
        """The election has ended: the role reads ``TERMINATED`` and every subscription ends."""
        self.finished = True
        self.on_request = None
        self.notify_changed()
        self.inbox.close()
        for sub in list(self.subscriptions):
            sub._end()
        self.subscriptions.clear()

    # ---------------------------------------------------------------- input

    def handle(self, item: object, now: float) -> Output | None:
        """Check one item from ``control`` and hand it to the core; ``None`` when it changes nothing."""
        core = self.core
        assert core is not None
        if isinstance(item, MESSAGE_TYPES):
            try:
                item.validate()  # type: ignore[attr-defined]
            except (TypeError, ValueError) as exc:
                self._reject(item, str(exc))
                return None
            self.counters.messages_received += 1
            bump(self.counters.received_by_kind, type(item).__name__)
            return core.step(item, now)  # type: ignore[arg-type]
        if item is CLOSED:
            logger.info("node %r term %d: control was closed", self.config.self_id, core.term)
            return core.shutdown(now)
        if not isinstance(item, (AddNode, RemoveNode, TransferLeadership, PeerDisconnected)):
            self._reject(item, f"{type(item).__name__} is neither a peer message nor a control message")
            return None
        try:
            item.validate()
        except TypeError as exc:
            self._reject(item, str(exc))
            return None
        if isinstance(item, AddNode):
            return self._add_node(item.node, now)
        if isinstance(item, RemoveNode):
            out = core.remove_peer(item.node_id, now)
            if item.node_id != self.config.self_id and item.node_id not in core.peer_ids:
                self.nodes.pop(item.node_id, None)
                sender = self.senders.pop(item.node_id, None)
                if sender is not None:
                    sender.close()
            return out
        if isinstance(item, PeerDisconnected):
            return core.peer_disconnected(item.node_id, now)
        return core.transfer_leadership(item.target_id, now)

    def _add_node(self, node: Node, now: float) -> Output | None:
        core = self.core
        assert core is not None
        node_id = node.node_id
        if node_id in core.peer_ids:
            self.nodes[node_id] = node
            logger.info("node %r term %d: replaced the handle of peer %r", self.config.self_id, core.term, node_id)
            return None
        out = core.add_peer(node_id, now)
        if node_id in core.peer_ids:
            self.nodes[node_id] = node
            self.senders[node_id] = PeerSender(self, node_id)
        return out

    def _reject(self, item: object, why: str) -> None:
        count = self.counters.messages_rejected = self.counters.messages_rejected + 1
        bump(self.counters.rejected_by_kind, type(item).__name__)
        if worth_logging(count):
            logger.warning(
                "node %r term %d: dropped %r from control: %s (%d dropped)",
                self.config.self_id,
                self.term,
                item,
                why,
                count,
            )

    def submit(self, command: Command) -> None:
        """Queue a request made through the state, and wake the driver."""
        self.commands.append(command)
        if self.on_request is not None:
            self.on_request()

    def next_command(self, now: float) -> Output | None:
        """Hand the oldest request to the core; ``None`` when there is none."""
        if not self.commands:
            return None
        core = self.core
        assert core is not None
        command = self.commands.popleft()
        if isinstance(command, PauseCandidacy):
            return core.set_candidacy_paused(command.paused, now)
        return core.transfer_leadership(command.target_id, now)

    # --------------------------------------------------------------- output

    def apply(self, out: Output) -> None:
        """Hand one output of the core to the executor: carried out now, or after ``save_pending``."""
        assert self.executor is not None
        self.executor.submit(out)
        self._check_view()

    @property
    def must_save(self) -> bool:
        """Whether an output waits for ``save_pending``."""
        return self.executor is not None and self.executor.pending_save is not None

    async def save_pending(self) -> None:
        """Save every state that outputs wait for, in order, releasing each output once its state is durable.

        Raises:
            Exception: whatever ``storage.save`` raised; the waiting outputs
                stay unsent, and the election must end.
        """
        executor = self.executor
        assert executor is not None
        while (hard_state := executor.pending_save) is not None:
            await self.storage.save(hard_state)
            executor.saved()
        self._check_view()

    def _send(self, to_id: NodeId, message: Message) -> None:
        sender = self.senders.get(to_id)
        if sender is not None:
            sender.send(message)

    def _publish(self, event: LeaderChanged) -> None:
        logger.info("node %r term %d: leader is now %r", self.config.self_id, event.term, event.leader_id)
        if self.observer is not None:
            self._observed_events.append(event)
        for sub in list(self.subscriptions):
            sub._push(event)

    # ----------------------------------------------------------------- view

    def _snapshot(self) -> tuple[object, ...]:
        core = self.core
        assert core is not None
        return (core.role, core.term, core.leader_id, core.lease_expires_at, core.candidacy_paused)

    def _check_view(self) -> None:
        view = self._snapshot()
        if view != self._view:
            self._view = view
            self.notify_changed()
        if self.observer is not None and not self.must_save:
            # What the node acts on: every output carried out, nothing waiting for a save.
            events, self._observed_events = tuple(self._observed_events), []
            assert self.core is not None
            assert self.clock is not None
            self.observer(self.core, events, self.clock())

    def notify_changed(self) -> None:
        """Wake whoever waits in ``state.wait_changed()``."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_changed(self) -> None:
        """Wait until the role, term, leader or lease changes, or the election ends."""
        if self.finished:
            await anyio.lowlevel.checkpoint()
            return
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def subscribe(self, buffer: int, current: LeaderChanged) -> Subscription:
        """A new subscription that starts with *current*."""
        sub = Subscription(self, buffer)
        sub._push(current)
        if self.finished:
            sub._end()
        else:
            self.subscriptions.add(sub)
        return sub
