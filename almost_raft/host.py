"""``ElectionHost``: many elections driven by one task, with one timer heap.

``raft_election`` gives each node a task of its own, which waits for its own
deadline.  That is the simple path and the right one for a process that runs
one node, or a few dozen.  A process that runs thousands of elections (one
per shard, say) pays for thousands of tasks waking up for their timers; the
host is for that case, and only for it: the application creates it and runs
elections through it, and nothing else in the library knows it exists.

The host's task steps every core it hosts: it takes the nodes that have
input (from ``control``, from a request, or handed over directly by the
in-memory transport) and the nodes whose deadline has come, and hands each
one's inputs to its core, in order.  The outputs go through the same
``Runtime`` and ``Executor`` as in ``raft_election``: an output that carries a
new term or vote makes the node *busy*; its own task (the one that runs
``run_election``) awaits the save, then the executor sends what waited, and
the node takes input again.  Other nodes go on meanwhile.  No node's core is
ever stepped from another node's task, and a message handed over directly
is only queued, never handled inside the sender's step.

Usage::

    host = ElectionHost()
    async with anyio.create_task_group() as tg:
        await tg.start(host.run)
        for state in states:
            await tg.start(host.run_election, state)
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import deque
from typing import Final, final

import anyio
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint

from ._core import Election, Output
from ._messages import Message, Role
from ._runtime import CLOSED, Runtime
from ._state import RaftElectionState

__all__ = ("ElectionHost",)

logger = logging.getLogger("almost_raft")

MAILBOX_SIZE: Final = 1024
"""Inputs queued for one hosted node; beyond it, a message handed over directly is lost (as with a full ``control``)."""


@final
class _Hosted:
    """One node as the host sees it."""

    __slots__ = ("armed", "busy", "core", "failure", "gone", "mailbox", "queued", "runtime", "space", "wakeup")

    def __init__(self, runtime: Runtime, core: Election) -> None:
        self.runtime = runtime
        self.core = core
        self.mailbox: deque[object] = deque()
        self.queued = False  # in the host's ready queue
        self.busy = False  # an output waits for its save: the host leaves the node alone
        self.gone = False
        self.failure: Exception | None = None  # raised by its core: ends this election only
        self.armed = math.inf  # the deadline of this node's live entry in the timer heap
        self.wakeup: anyio.Event | None = None  # the node's own task waits on it
        self.space: anyio.Event | None = None  # the receive task waits on it

    def wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()


@final
class ElectionHost:
    """Runs many elections from one task, with one timer heap (opt-in, for thousands of nodes per process).

    Start ``run`` in a task group, then run each election with
    ``run_election(state)`` instead of ``raft_election(state)``; everything
    else (``control``, subscriptions, ``status()``, storage) behaves the same.
    With the in-memory transport, register each node with
    ``MemoryNetwork.register(node_id, control, host=host, state=state)`` so
    that messages go straight into the host.

    Args:
        slice: seconds of work the host does before it lets other tasks run
            (real time): bounds how long it holds the event loop after a
            stall, when many timers are due at once.
    """

    def __init__(self, *, slice: float = 0.005) -> None:
        if not slice > 0:
            raise ValueError(f"slice must be > 0 seconds, got {slice!r}")
        self._slice = slice
        self._nodes: dict[Runtime, _Hosted] = {}
        self._ready: deque[_Hosted] = deque()
        self._heap: list[tuple[float, int, _Hosted]] = []
        self._seq = 0
        self._wakeup: anyio.Event | None = None
        self._running = False

    @property
    def hosted(self) -> int:
        """How many elections this host runs now."""
        return len(self._nodes)

    # ----------------------------------------------------------- the host task

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The host's task: steps every hosted core until cancelled.

        Raises:
            RuntimeError: the host already runs.
        """
        if self._running:
            raise RuntimeError("this ElectionHost already runs")
        self._running = True
        try:
            task_status.started()
            while True:
                if self._fire_timers() | self._work():
                    await checkpoint()  # more to do: let the other tasks run first
                    continue
                self._wakeup = anyio.Event()
                with anyio.CancelScope(deadline=self._heap[0][0] if self._heap else math.inf):
                    await self._wakeup.wait()
                self._wakeup = None
        finally:
            self._running = False

    def _schedule(self, node: _Hosted) -> None:
        if not node.queued:
            node.queued = True
            self._ready.append(node)
            if self._wakeup is not None:
                self._wakeup.set()

    def _arm(self, node: _Hosted) -> None:
        """Make sure *node* is stepped no later than its core's next deadline."""
        deadline = node.core.next_deadline
        if deadline < node.armed:
            # An entry for a later deadline stays in the heap and is skipped
            # when it comes up; one for an earlier deadline fires early, finds
            # nothing due and is set again: a heartbeat costs no heap operation.
            node.armed = deadline
            self._seq += 1
            heapq.heappush(self._heap, (deadline, self._seq, node))
            if self._wakeup is not None and self._heap[0][2] is node:
                self._wakeup.set()

    def _fire_timers(self) -> bool:
        """Queue every node whose entry is due; ``True`` if the slice ran out first."""
        heap = self._heap
        now = anyio.current_time()
        give_up = time.perf_counter() + self._slice
        fired = 0
        while heap and heap[0][0] <= now:
            deadline, _, node = heapq.heappop(heap)
            if node.armed != deadline or node.gone:
                continue  # superseded by an earlier entry, or gone
            node.armed = math.inf
            self._schedule(node)
            fired += 1
            if fired % 64 == 0 and time.perf_counter() > give_up:
                return True
        return False

    def _work(self) -> bool:
        """Step the nodes that are ready; ``True`` if the slice ran out first."""
        ready = self._ready
        give_up = time.perf_counter() + self._slice
        done = 0
        while ready:
            node = ready.popleft()
            node.queued = False
            try:
                self._step(node)
            except Exception as exc:
                # A bug in one election ends that election (its run_election
                # raises it), never the host or the other elections.
                node.failure = exc
                node.gone = True
                node.wake()
            done += 1
            if done % 32 == 0 and time.perf_counter() > give_up:
                return bool(ready)
        return False

    def _step(self, node: _Hosted) -> None:
        """Hand every waiting input of *node* to its core, until an output must be saved."""
        if node.busy or node.gone:
            return
        runtime = node.runtime
        core = node.core
        mailbox = node.mailbox
        now = anyio.current_time()
        while core.role is not Role.TERMINATED:
            out: Output | None
            if runtime.commands:
                out = runtime.next_command(now)
            elif mailbox:
                out = runtime.handle(mailbox.popleft(), now)
                if node.space is not None:
                    node.space.set()
                    node.space = None
            elif now >= core.next_deadline:
                out = core.tick(now)
            else:
                break
            if out is None:
                continue
            runtime.apply(out)
            if runtime.must_save:
                node.busy = True
                node.wake()  # its own task saves, then hands the node back
                return
        if core.role is Role.TERMINATED:
            node.wake()
        else:
            self._arm(node)

    # ------------------------------------------------------------ elections

    def deliver_nowait(self, state: RaftElectionState, message: Message) -> bool | None:
        """Queue *message* for the election of *state*, as if it had arrived through ``control``.

        Returns:
            ``True`` when queued, ``False`` when lost (the node's input is
            full), ``None`` when this host does not run that election now.
        """
        node = self._nodes.get(state.runtime)
        if node is None:
            return None
        if len(node.mailbox) >= MAILBOX_SIZE:
            return False
        node.mailbox.append(message)
        self._schedule(node)
        return True

    async def run_election(
        self, state: RaftElectionState, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the election of *state* in this host: ``raft_election(state)``, stepped by the host's task.

        Same contract as ``raft_election``: it loads the storage, reports
        itself started, and returns when the node is removed or ``control``
        is closed; cancelled, a leader hands over first.  The host's ``run``
        must be running.

        Raises:
            RuntimeError: the state has already been run.
            ValueError, OSError: the storage could not be loaded, or a save failed.
        """
        runtime = state.runtime
        runtime.claim()
        node: _Hosted | None = None
        try:
            hard_state = await runtime.storage.load()
            failure: Exception | None = None
            try:
                async with anyio.create_task_group() as tg:
                    core = runtime.start(
                        hard_state,
                        anyio.current_time(),
                        anyio.current_time,
                        lambda fn, name: tg.start_soon(fn, name=name),
                    )
                    node = _Hosted(runtime, core)
                    hosted = node
                    runtime.on_request = lambda: self._schedule(hosted)
                    self._nodes[runtime] = node
                    tg.start_soon(self._receive, node, name=f"almost_raft receive {state.self_id!r}")
                    self._schedule(node)
                    task_status.started()
                    try:
                        await self._serve(node)
                    except Exception as exc:
                        failure = exc  # a failed save: raised as itself, not in a group
                    finally:
                        # The host steps this node no more, and no sender
                        # task may start once the task group winds down.
                        node.gone = True
                        self._nodes.pop(runtime, None)
                    if failure is None:
                        await runtime.drain()
                    runtime.spawn = None
                    tg.cancel_scope.cancel()
                if failure is not None:
                    raise failure
            finally:
                if node is not None:
                    node.gone = True
                    self._nodes.pop(runtime, None)
                await runtime.stop()
        finally:
            runtime.finish()

    async def _serve(self, node: _Hosted) -> None:
        """The node's own task: save what the host found to save, until the election ends."""
        runtime = node.runtime
        while True:
            if node.failure is not None:
                raise node.failure
            if node.busy:
                await runtime.save_pending()
                node.busy = False
                self._schedule(node)
                continue
            if node.core.role is Role.TERMINATED:
                return
            node.wakeup = anyio.Event()
            await node.wakeup.wait()
            node.wakeup = None

    async def _receive(self, node: _Hosted) -> None:
        """Move everything that arrives through ``control`` into the node's input, in order."""
        mailbox = node.mailbox
        async for item in node.runtime.inbox:
            mailbox.append(item)
            self._schedule(node)
            while len(mailbox) >= MAILBOX_SIZE:
                node.space = anyio.Event()
                await node.space.wait()
        mailbox.append(CLOSED)
        self._schedule(node)
