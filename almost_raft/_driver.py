"""``raft_election``: the anyio shell around the pure election core.

One loop owns the core, so nothing needs a lock.  It waits for whichever
comes first, the next item from ``control`` or the core's next deadline, hands
it to the core, then carries out the core's ``Output`` in order: save the hard
state, queue the messages, publish the events.  It never awaits a peer or a
subscriber: each peer has its own sender task fed through a bounded queue,
and subscribers get events through buffers that drop the oldest.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import RunVar, checkpoint

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
_TICK: Final = object()

_MAILBOX_SIZE: Final = 1024
"""Input handed over directly and not yet handled; beyond it, direct input is lost (as with ``control``)."""

_MAX_DEPTH: Final = 8
"""How many nodes may handle input nested in one task before the rest waits for its own task."""


class _Depth(threading.local):
    value = 0
    now = 0.0  # the clock as read by the outermost handling in progress


_depth = _Depth()
# The elections running now (an entry lives exactly as long as its run()).
_running: dict[RaftElectionState, _Driver] = {}


class _Timers:
    """The timers of every election on one event loop, kept by one of their tasks.

    Only the keeper's task sleeps with a timeout, until the earliest deadline
    of all; then it hands each node whose deadline has come a tick, as an
    input like any other (handled at once when the node is idle).  The other
    nodes' tasks sleep until they have work of their own (an output to save,
    a request).  A loop running thousands of elections then wakes once per
    distinct deadline, not once per node and timer, and no timer fires early.

    A node whose deadline moves later (a follower hearing its leader) keeps
    its entry: the entry fires early, sees the later deadline and is set
    again, so a heartbeat costs no heap operation.
    """

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, _Driver]] = []
        self.seq = 0
        self.keeper: _Driver | None = None
        self.members: dict[_Driver, None] = {}

    def arm(self, driver: _Driver) -> None:
        """Make sure *driver* is woken no later than its core's next deadline."""
        deadline = driver.core.next_deadline
        if deadline >= driver._armed:
            return  # an entry fires earlier; it is set again then
        driver._armed = deadline
        self.seq += 1
        heapq.heappush(self.heap, (deadline, self.seq, driver))
        keeper = self.keeper
        if keeper is not None and keeper._sleeping and deadline < keeper._sleep_until:
            keeper.wake()

    def fire_due(self, now: float, budget: float = 0.005) -> bool:
        """Hand a tick to every node due at *now*; return whether more are due after *budget* seconds of work.

        The budget (real time, not the loop's clock) bounds how long the
        loop is held when many timers are due at once, after a stall.
        """
        heap = self.heap
        give_up = time.perf_counter() + budget
        fired = 0
        while heap and heap[0][0] <= now:
            deadline, _, driver = heapq.heappop(heap)
            if driver._armed != deadline or driver not in self.members:
                continue  # superseded by an earlier entry, or gone
            driver._armed = math.inf
            if driver.core.next_deadline > now:
                self.arm(driver)  # the deadline moved on meanwhile
                continue
            driver.offer(_TICK)
            fired += 1
            if fired % 16 == 0 and time.perf_counter() > give_up:
                return bool(heap) and heap[0][0] <= now
        return False

    def next_wake(self) -> float:
        return self.heap[0][0] if self.heap else math.inf

    def resign(self, driver: _Driver) -> None:
        """*driver* stops keeping the timers (it is about to await, or leaves): a sleeping member takes over."""
        if self.keeper is not driver:
            return
        self.keeper = None
        for other in self.members:
            if other is not driver and other._sleeping:
                other.wake()  # it claims the timers when it goes back to sleep
                return

    def leave(self, driver: _Driver) -> None:
        self.members.pop(driver, None)
        self.resign(driver)


_timers_var: RunVar[_Timers] = RunVar("almost_raft_timers")


def _timers() -> _Timers:
    """The timers of the running event loop."""
    try:
        return _timers_var.get()
    except LookupError:
        timers = _Timers()
        _timers_var.set(timers)
        return timers


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
        self._nowait_node: object = None
        self._nowait: Callable[[Message], object] | None = None
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
        if node is not self._nowait_node:  # (looked up once per handle, not per message)
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
        self.timers = _timers()
        self._armed = math.inf  # deadline of this node's live entry in self.timers
        self._idle_event: anyio.Event | None = None

    def _snapshot(self) -> tuple[object, ...]:
        core = self.core
        return (core.role, core.term, core.leader_id, core.lease_expires_at, core.candidacy_paused)

    def wake(self) -> None:
        """Interrupt the node's own task if it sleeps: it has work (a request, an output to save, a timer)."""
        if not self._sleeping:
            return
        self._sleeping = False
        if self._idle_event is not None:
            self._idle_event.set()  # a node that waits for work: cheap to wake
        elif self._timer_scope is not None:
            self._timer_scope.cancel()  # the keeper, asleep until a deadline

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
                # A cascade of nodes answering each other in one task happens
                # at one instant: the clock is read once, by the outermost.
                if depth == 0:
                    _depth.now = anyio.current_time()
                _depth.value = depth + 1
                try:
                    self._process_now(_depth.now)
                finally:
                    _depth.value = depth
        return True

    def _take(self, item: object, now: float) -> Output | None:
        if item is _TICK:
            deadline = self.core.next_deadline
            # Jitter must never show the core an early timer.
            return self.core.tick(max(now, deadline)) if now >= deadline else None
        if item is _CLOSED:
            logger.info("node %r term %d: control was closed", self.state.self_id, self.core.term)
            return self.core.shutdown(now)
        return self.handle(item, now)

    def _process_now(self, now: float) -> None:
        """Handle the mailbox in the caller's task at *now*; an output to save goes to the node's own task."""
        core = self.core
        mailbox = self.mailbox
        self.busy = True
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
        if core.role is Role.TERMINATED:
            self.wake()
        else:
            self.timers.arm(self)

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
        if core.role is not Role.TERMINATED:
            self.timers.arm(self)

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
            # Nobody's timers wait for this node's storage.
            self.timers.resign(self)
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
        if out.events:
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
        timers = self.timers
        timers.members[self] = None
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
                        timers.arm(self)
                        if timers.keeper is None:
                            timers.keeper = self
                        if timers.keeper is self:
                            if timers.next_wake() <= now:
                                if timers.fire_due(now):
                                    await checkpoint()  # a long catch-up leaves the others a turn
                                continue
                            self._sleep_until = timers.next_wake()
                        else:
                            self._sleep_until = math.inf  # the keeper hands this node its ticks
                        self._sleeping = True
                        try:
                            if self._sleep_until == math.inf:
                                # Woken by an event, not by cancellation: a node
                                # that has work costs the loop one plain wake-up.
                                self._idle_event = anyio.Event()
                                await self._idle_event.wait()
                            else:
                                await anyio.sleep(self._sleep_until - now)
                        finally:
                            self._sleeping = False
                            self._idle_event = None
                            self._sleep_until = -math.inf
                self._timer_scope = None
        finally:
            _running.pop(state, None)
            timers.leave(self)
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
