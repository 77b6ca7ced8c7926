"""``raft_election``: the anyio shell around the pure election core.

One loop owns the core, so nothing needs a lock.  It waits for whichever
comes first, the next item from ``control`` or the core's next deadline, hands
it to the core, then carries out the core's ``Output`` in order: save the hard
state, queue the messages, publish the events.  It never awaits a peer or a
subscriber: each peer has its own sender task fed through a bounded queue,
and subscribers get events through buffers that drop the oldest.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Final

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._core import Election, Output
from ._messages import (
    MESSAGE_TYPES,
    AddNode,
    Message,
    NodeId,
    RemoveNode,
    Role,
    TransferLeadership,
)
from ._state import RaftElectionState, bump

logger = logging.getLogger("almost_raft")

PEER_QUEUE_SIZE: Final = 64
"""Outgoing messages kept per peer; when full, the oldest is dropped (a newer one supersedes it)."""

_CLOSED: Final = object()

_MAILBOX_SIZE: Final = 1024
"""Input handed over directly and not yet handled; beyond it, direct input is lost (as with ``control``)."""

_MAX_DEPTH: Final = 8
"""How many nodes may handle input nested in one task before the rest waits for its own task."""


class _Depth(threading.local):
    value = 0


_depth = _Depth()
# The elections running now (an entry lives exactly as long as its run()).
_running: dict[RaftElectionState, _Driver] = {}


def deliver_nowait(state: RaftElectionState, message: Message) -> bool | None:
    """Hand *message* straight to the running election of *state*, without a task switch.

    The in-memory transport's fast path: the message is handled as if it had
    arrived through ``control`` (same checks, same counters, in order with
    what is queued), at once when the node is idle.

    Returns:
        ``True`` when taken, ``False`` when lost (the node's mailbox is
        full), ``None`` when the election of *state* is not running here: the
        caller then goes through ``control``.
    """
    driver = _running.get(state)
    if driver is None:
        return None
    return driver.offer(message, direct=True)


class _PeerSender:
    """Sends one peer's messages in order, apart from the election loop.

    Its task is started on the first message that needs it: a peer whose
    ``Node`` takes every message through ``send_message_nowait`` (the
    in-memory transport does) never costs a task.
    """

    def __init__(self, state: RaftElectionState, peer_id: NodeId, spawn: Callable[[_PeerSender], None]) -> None:
        self._state = state
        self.peer_id = peer_id
        self._queue: deque[Message] = deque()
        self._closed = False
        self._waiter: anyio.Event | None = None
        self._failing = False
        self._spawn: Callable[[_PeerSender], None] | None = spawn
        self._sending = False
        self.done: anyio.Event | None = None

    def send_nowait(self, message: Message) -> bool:
        """Hand *message* to the node at once if it can take it without waiting.

        Returns ``False`` when the message must go through the sender task:
        the node has no ``send_message_nowait``, it raised ``WouldBlock``, or
        earlier messages are still queued (order is kept).
        """
        if self._queue or self._sending or self._closed:
            return False
        node = self._state._nodes.get(self.peer_id)
        if node is None:
            return True  # removed meanwhile: the message is lost, as from the queue
        send_nowait = getattr(node, "send_message_nowait", None)
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

    def push(self, message: Message) -> None:
        """Queue *message* without waiting; drop the oldest one when the queue is full."""
        if self._closed:
            return
        if len(self._queue) >= PEER_QUEUE_SIZE:
            dropped = self._queue.popleft()
            counters = self._state._driver_counters
            counters.messages_dropped += 1
            bump(counters.dropped_by_kind, type(dropped).__name__)
        self._queue.append(message)
        if self._spawn is not None:
            spawn, self._spawn = self._spawn, None
            self.done = anyio.Event()
            spawn(self)
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def close(self) -> None:
        """Send what is queued, then stop."""
        self._closed = True
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    async def run(self) -> None:
        try:
            while True:
                while not self._queue:
                    if self._closed:
                        return
                    self._waiter = anyio.Event()
                    await self._waiter.wait()
                message = self._queue.popleft()
                node = self._state._nodes.get(self.peer_id)
                if node is not None:
                    self._sending = True
                    try:
                        await self._send(node.send_message, message)
                    finally:
                        self._sending = False
        finally:
            if self.done is not None:
                self.done.set()

    async def _send(self, send: object, message: Message) -> None:
        state = self._state
        error: str | None = None
        with anyio.move_on_after(state.message_timeout) as scope:
            try:
                await send(message)  # type: ignore[operator]
            except Exception as exc:  # a Node's failure is a lost message, never ours
                error = f"{type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            error = f"no answer within message_timeout={state.message_timeout}s"
        self._record(message, error)

    def _record(self, message: Message, error: str | None) -> None:
        state = self._state
        counters = state._driver_counters
        if error is None:
            counters.messages_sent += 1
            bump(counters.sent_by_kind, type(message).__name__)
            if self._failing:
                self._failing = False
                logger.info("node %r term %d: sending to %r works again", state.self_id, state.term, self.peer_id)
            return
        counters.send_failures += 1
        counters.send_failures_by_peer[self.peer_id] = counters.send_failures_by_peer.get(self.peer_id, 0) + 1
        # Log once per change of state, not once per message.
        if not self._failing:
            self._failing = True
            logger.warning(
                "node %r term %d: sending %s to %r failed: %s",
                state.self_id,
                state.term,
                type(message).__name__,
                self.peer_id,
                error,
            )
        else:
            logger.debug(
                "node %r term %d: sending to %r failed again: %s", state.self_id, state.term, self.peer_id, error
            )


class _Driver:
    """Owns one node's core: every input goes through ``offer`` into one mailbox.

    Whoever offers an input while nobody is stepping the core handles it at
    once, in its own task and without awaiting: the receive task for what
    arrives through ``control``, the sending node's task for what the
    in-memory transport hands over directly (``deliver_nowait``).  An output
    that must be saved first (a new term or vote) goes to the node's own
    task, which awaits ``storage.save`` before anything is sent; until then
    the node is ``busy`` and new input waits in the mailbox, in order.  The
    node's own task otherwise only sleeps until the core's next deadline.
    """

    def __init__(self, state: RaftElectionState, core: Election, tg: TaskGroup) -> None:
        self.state = state
        self.core = core
        self.tg = tg
        self.senders: dict[NodeId, _PeerSender] = {}
        self._view = self._snapshot()
        self.mailbox: deque[object] = deque()
        self.busy = True  # until run() starts taking input
        self.deferred: Output | None = None
        self._timer_scope: anyio.CancelScope | None = None
        self._sleeping = False
        self._sleep_until = -math.inf
        self._run_pending = False

    def _snapshot(self) -> tuple[object, ...]:
        core = self.core
        return (core.role, core.term, core.leader_id, core.lease_expires_at, core.candidacy_paused)

    def wake(self) -> None:
        """Interrupt the node's own task if it sleeps: it has work (a request, an output to save, a timer)."""
        if self._sleeping and self._timer_scope is not None:
            self._sleeping = False
            self._timer_scope.cancel()

    # ----------------------------------------------------------------- input

    def offer(self, item: object, *, direct: bool = False) -> bool:
        """Queue *item* for the core, and handle it at once if nobody is stepping the core.

        Returns ``False`` (the item is lost) when *direct* and the mailbox
        is full, as a full ``control`` buffer loses a message.
        """
        mailbox = self.mailbox
        if direct and len(mailbox) >= _MAILBOX_SIZE:
            return False
        mailbox.append(item)
        if not self.busy:
            depth = _depth.value
            if depth >= _MAX_DEPTH:
                # A long chain of nodes answering each other in one task:
                # let this node's own task take it from here.
                self._run_pending = True
                self.wake()
            else:
                _depth.value = depth + 1
                try:
                    self._process_now()
                finally:
                    _depth.value = depth
        return True

    def _take(self, item: object, now: float) -> Output | None:
        if item is _CLOSED:
            logger.info("node %r term %d: control was closed", self.state.self_id, self.core.term)
            return self.core.shutdown(now)
        return self.handle(item, now)

    def _process_now(self) -> None:
        """Handle the mailbox in the caller's task; an output to save goes to the node's own task."""
        core = self.core
        mailbox = self.mailbox
        self.busy = True
        # One reading of the clock for the batch: nothing awaits in between.
        now = anyio.current_time()
        try:
            while mailbox and core.role is not Role.TERMINATED:
                out = self._take(mailbox.popleft(), now)
                if out is None:
                    continue
                if out.persist is not None:
                    # Saved before anything that reflects it is sent: only the
                    # node's own task may await storage.  It stays busy until then.
                    self.deferred = out
                    self.wake()
                    return
                self.apply_now(out)
        except BaseException:
            self.busy = False
            raise
        self.busy = False
        if core.role is Role.TERMINATED or core.next_deadline < self._sleep_until:
            self.wake()

    async def _process(self) -> None:
        """Handle the mailbox in the node's own task (busy is set), awaiting saves."""
        core = self.core
        mailbox = self.mailbox
        try:
            while mailbox and core.role is not Role.TERMINATED:
                out = self._take(mailbox.popleft(), anyio.current_time())
                if out is not None:
                    await self.apply(out)
        finally:
            self.busy = False

    def start_sender(self, peer_id: NodeId) -> None:
        self.senders[peer_id] = _PeerSender(self.state, peer_id, self._spawn_sender)

    def _spawn_sender(self, sender: _PeerSender) -> None:
        self.tg.start_soon(sender.run, name=f"almost_raft sender {self.state.self_id!r}->{sender.peer_id!r}")

    def stop_sender(self, peer_id: NodeId) -> None:
        sender = self.senders.pop(peer_id, None)
        if sender is not None:
            sender.close()

    def reject(self, item: object, why: str) -> None:
        self.state._driver_counters.messages_rejected += 1
        bump(self.state._driver_counters.rejected_by_kind, type(item).__name__)
        logger.warning("node %r term %d: dropped %r from control: %s", self.state.self_id, self.core.term, item, why)

    def handle(self, item: object, now: float) -> Output | None:
        core = self.core
        state = self.state
        if isinstance(item, MESSAGE_TYPES):
            try:
                item.validate()  # type: ignore[attr-defined]
            except (TypeError, ValueError) as exc:
                self.reject(item, str(exc))
                return None
            state._driver_counters.messages_received += 1
            bump(state._driver_counters.received_by_kind, type(item).__name__)
            return core.step(item, now)  # type: ignore[arg-type]
        if isinstance(item, AddNode):
            try:
                item.validate()
            except TypeError as exc:
                self.reject(item, str(exc))
                return None
            node_id = item.node.node_id
            if node_id in core.peer_ids:
                state._nodes[node_id] = item.node
                logger.info("node %r term %d: replaced the handle of peer %r", state.self_id, core.term, node_id)
                return None
            out = core.add_peer(node_id, now)
            if node_id in core.peer_ids:
                state._nodes[node_id] = item.node
                self.start_sender(node_id)
            return out
        if isinstance(item, RemoveNode):
            try:
                item.validate()
            except TypeError as exc:
                self.reject(item, str(exc))
                return None
            out = core.remove_peer(item.node_id, now)
            if item.node_id != state.self_id and item.node_id not in core.peer_ids:
                state._nodes.pop(item.node_id, None)
                self.stop_sender(item.node_id)
            return out
        if isinstance(item, TransferLeadership):
            try:
                item.validate()
            except TypeError as exc:
                self.reject(item, str(exc))
                return None
            return core.transfer_leadership(item.target_id, now)
        self.reject(item, f"{type(item).__name__} is neither a peer message nor a control message")
        return None

    async def apply(self, out: Output) -> None:
        if out.persist is not None:
            # Saved before anything that reflects it is sent (paper, Figure 2).
            await self.state.storage.save(out.persist)
        self.apply_now(out)

    def apply_now(self, out: Output) -> None:
        """Carry out *out* after its ``persist`` (if any) was saved: send, publish."""
        state = self.state
        for to_id, message in out.sends:
            sender = self.senders.get(to_id)
            if sender is not None and not sender.send_nowait(message):
                sender.push(message)
        for event in out.events:
            logger.info("node %r term %d: leader is now %r", state.self_id, event.term, event.leader_id)
            state._publish(event)
        view = self._snapshot()
        if view != self._view:
            self._view = view
            state._notify_changed()

    def run_command(self, command: TransferLeadership | bool, now: float) -> Output:
        if isinstance(command, TransferLeadership):
            return self.core.transfer_leadership(command.target_id, now)
        return self.core.set_candidacy_paused(command, now)

    def terminated(self) -> bool:
        return self.core.role is Role.TERMINATED

    async def receive(self) -> None:
        """The receive task: hand everything that arrives through ``control`` to ``offer``."""
        inbox = self.state._inbox
        while True:
            try:
                item: object = inbox.receive_nowait()
            except anyio.WouldBlock:
                try:
                    item = await inbox.receive()
                except anyio.EndOfStream:
                    break
            except anyio.EndOfStream:
                break
            self.offer(item)
        self.offer(_CLOSED)

    async def run(self) -> None:
        """The node's own task: timers, requests, and outputs that must be saved first."""
        core = self.core
        state = self.state
        if state._paused_at_start:
            await self.apply(core.set_candidacy_paused(True, anyio.current_time()))
        state._wake_driver = self.wake
        _running[state] = self
        self.busy = False
        self.tg.start_soon(self.receive, name=f"almost_raft receive {state.self_id!r}")
        try:
            while not self.terminated():
                # One cancel scope serves every sleep until something wakes
                # this task early (wake() cancels it): a timer costs a plain sleep.
                with anyio.CancelScope() as self._timer_scope:
                    while not self.terminated():
                        if self.deferred is not None:
                            out, self.deferred = self.deferred, None
                            await self.apply(out)  # still busy: the mailbox waits
                            await self._process()
                            continue
                        if self._run_pending or (self.mailbox and not self.busy):
                            self._run_pending = False
                            if not self.busy:
                                self.busy = True
                                await self._process()
                            continue
                        now = anyio.current_time()
                        if state._commands:
                            self.busy = True
                            try:
                                await self.apply(self.run_command(state._commands.popleft(), now))
                            finally:
                                self.busy = False
                            continue
                        deadline = core.next_deadline
                        if now >= deadline:
                            self.busy = True
                            try:
                                # Jitter must never show the core an early timer.
                                await self.apply(core.tick(max(now, deadline)))
                            finally:
                                self.busy = False
                            continue
                        self._sleep_until = deadline
                        self._sleeping = True
                        try:
                            await anyio.sleep(deadline - now)
                        finally:
                            self._sleeping = False
                            self._sleep_until = -math.inf
                self._timer_scope = None
        finally:
            _running.pop(state, None)
            self.busy = True  # nothing steps this core any more

    async def drain(self) -> None:
        """Give the senders up to ``message_timeout`` to deliver what is queued (a hand-over)."""
        for sender in self.senders.values():
            sender.close()
        with anyio.move_on_after(self.state.message_timeout):
            for sender in self.senders.values():
                if sender.done is not None:
                    await sender.done.wait()


async def raft_election(
    state: RaftElectionState,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run one node's election until it is removed, ``control`` is closed, or it is cancelled.

    It loads the hard state from ``state.storage``, then reports itself
    started (so ``await tg.start(raft_election, state)`` returns once the node
    takes part), and runs until ``RemoveNode(self_id)`` arrives, ``control`` is
    closed (a leader then hands over first), or the task is cancelled.  The
    role is ``Role.TERMINATED`` afterwards and every subscription ends.

    Args:
        state: from ``RaftElectionState.init``; a state runs once.
        task_status: set by ``TaskGroup.start``.

    Raises:
        RuntimeError: this state has already been run.
        ValueError, OSError: the storage could not be loaded (a corrupt file
            is never read as a fresh node).
    """
    state._claim()
    try:
        hard_state = await state.storage.load()
        now = anyio.current_time()
        core = Election(state.config, peers=state._nodes, hard_state=hard_state, rng=state.rng, now=now)
        state._attach(core, anyio.current_time)
        logger.info(
            "node %r term %d: election started with peers %r (voted_for=%r)",
            state.self_id,
            core.term,
            list(core.peer_ids),
            core.voted_for,
        )
        try:
            async with anyio.create_task_group() as tg:
                driver = _Driver(state, core, tg)
                for peer_id in core.peer_ids:
                    driver.start_sender(peer_id)
                task_status.started()
                await driver.run()
                await driver.drain()
                tg.cancel_scope.cancel()
        finally:
            if core.role is Role.LEADER:
                await _hand_over(state, core)
            elif core.role is not Role.TERMINATED:
                # Cancelled or failed: the last event says no leader is known.
                for event in core.shutdown(anyio.current_time()).events:
                    state._publish(event)
    finally:
        state._finish()


async def _hand_over(state: RaftElectionState, core: Election) -> None:
    """A leader cancelled (or failing) hands over with ``TimeoutNow`` before it goes.

    Shielded and bounded by ``message_timeout``: a rolling restart then costs
    one round trip instead of an election timeout.
    """
    with anyio.CancelScope(shield=True):
        out = core.shutdown(anyio.current_time())
        for event in out.events:
            state._publish(event)
        with anyio.move_on_after(state.message_timeout):
            for to_id, message in out.sends:
                node = state._nodes.get(to_id)
                if node is None:
                    continue
                try:
                    await node.send_message(message)
                except Exception as exc:
                    logger.warning("node %r term %d: hand-over to %r failed: %s", state.self_id, core.term, to_id, exc)
