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
from collections import deque
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

_TIMER: Final = object()
_CLOSED: Final = object()


class _PeerSender:
    """Sends one peer's messages in order, apart from the election loop."""

    def __init__(self, state: RaftElectionState, peer_id: NodeId) -> None:
        self._state = state
        self.peer_id = peer_id
        self._queue: deque[Message] = deque()
        self._closed = False
        self._waiter: anyio.Event | None = None
        self._failing = False
        self.done = anyio.Event()

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
                    await self._send(node.send_message, message)
        finally:
            self.done.set()

    async def _send(self, send: object, message: Message) -> None:
        state = self._state
        counters = state._driver_counters
        error: str | None = None
        with anyio.move_on_after(state.message_timeout) as scope:
            try:
                await send(message)  # type: ignore[operator]
            except Exception as exc:  # a Node's failure is a lost message, never ours
                error = f"{type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            error = f"no answer within message_timeout={state.message_timeout}s"
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
    def __init__(self, state: RaftElectionState, core: Election, tg: TaskGroup) -> None:
        self.state = state
        self.core = core
        self.tg = tg
        self.senders: dict[NodeId, _PeerSender] = {}
        self._wait_scope: anyio.CancelScope | None = None
        self._view = self._snapshot()

    def _snapshot(self) -> tuple[object, ...]:
        core = self.core
        return (core.role, core.term, core.leader_id, core.lease_expires_at, core.candidacy_paused)

    def wake(self) -> None:
        """Interrupt the wait for input: a request arrived through the state."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    def start_sender(self, peer_id: NodeId) -> None:
        sender = _PeerSender(self.state, peer_id)
        self.senders[peer_id] = sender
        self.tg.start_soon(sender.run, name=f"almost_raft sender {self.state.self_id!r}->{peer_id!r}")

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
        state = self.state
        if out.persist is not None:
            # Saved before anything that reflects it is sent (paper, Figure 2).
            await state.storage.save(out.persist)
        for to_id, message in out.sends:
            sender = self.senders.get(to_id)
            if sender is not None:
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

    async def run(self) -> None:
        core = self.core
        state = self.state
        inbox = state._inbox
        if state._paused_at_start:
            await self.apply(core.set_candidacy_paused(True, anyio.current_time()))
        state._wake_driver = self.wake
        while core.role is not Role.TERMINATED:
            if state._commands:
                await self.apply(self.run_command(state._commands.popleft(), anyio.current_time()))
                continue
            deadline = core.next_deadline
            item: object = _TIMER
            with anyio.CancelScope(deadline=deadline) as self._wait_scope:
                try:
                    item = await inbox.receive()
                except anyio.EndOfStream:
                    item = _CLOSED
            self._wait_scope = None
            now = anyio.current_time()
            if item is _TIMER and now < deadline:
                continue  # woken up for a request, see the top of the loop
            if item is _TIMER:
                # Jitter must never show the core an early timer.
                out: Output | None = core.tick(max(now, deadline))
            elif item is _CLOSED:
                logger.info("node %r term %d: control was closed", self.state.self_id, core.term)
                out = core.shutdown(now)
            else:
                out = self.handle(item, now)
            if out is not None:
                await self.apply(out)

    async def drain(self) -> None:
        """Give the senders up to ``message_timeout`` to deliver what is queued (a hand-over)."""
        for sender in self.senders.values():
            sender.close()
        with anyio.move_on_after(self.state.message_timeout):
            for sender in self.senders.values():
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
