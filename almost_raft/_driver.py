"""``raft_election``: the anyio shell around the pure election core, one node per task.

One task owns the core, so nothing needs a lock.  It takes the next input
(a request made through the state, then an item from ``control``, then a
timer that is due), hands it to the core, and gives the core's ``Output`` to
the node's ``Executor`` through its ``Runtime``: save, then send, then
publish.  When an output carries a new term or vote, the task awaits the
save before it takes anything else, and nothing of that output leaves the
node before the save has returned.  When there is no input, it waits on an
``Event`` until the core's next deadline; the cancel scope that bounds the
wait covers that wait and nothing else, so a wake-up can never land on a
save.

A second task only moves items from ``control`` into the node's mailbox (a
``receive`` from a memory stream cannot be cancelled without losing what it
received).  Peers get their messages through their own ``PeerSender``, never
awaited here, and subscribers through buffers that drop the oldest.

Many elections in one process are the job of ``almost_raft.host.ElectionHost``,
an explicit object the application creates; this module keeps no state of
its own.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Final

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import checkpoint

from ._core import Election, Output
from ._messages import Role
from ._runtime import CLOSED, Runtime
from ._state import RaftElectionState

logger = logging.getLogger("almost_raft")

MAILBOX_SIZE: Final = 64
"""Items taken from ``control`` and not handled yet; beyond it the receive task waits."""


class _Loop:
    """The node's own task (``run``) and the task that feeds it from ``control`` (``receive``)."""

    def __init__(self, runtime: Runtime, core: Election) -> None:
        self.runtime = runtime
        self.core = core
        self.mailbox: deque[object] = deque()
        self.wakeup: anyio.Event | None = None
        self.space: anyio.Event | None = None
        runtime.on_request = self.wake

    def wake(self) -> None:
        """Input arrived: end the wait, if the loop waits."""
        if self.wakeup is not None:
            self.wakeup.set()

    async def receive(self) -> None:
        """Move everything that arrives through ``control`` into the mailbox, in order."""
        mailbox = self.mailbox
        inbox = self.runtime.inbox
        async for item in inbox:
            mailbox.append(item)
            # Take what else is waiting too: one wake-up of the loop per burst.
            while len(mailbox) < MAILBOX_SIZE:
                try:
                    mailbox.append(inbox.receive_nowait())
                except anyio.WouldBlock:
                    break
                except anyio.EndOfStream:
                    mailbox.append(CLOSED)
                    self.wake()
                    return
            self.wake()
            while len(mailbox) >= MAILBOX_SIZE:
                self.space = anyio.Event()
                await self.space.wait()
        mailbox.append(CLOSED)
        self.wake()

    def next_output(self, now: float) -> Output | None:
        """The core's output for the next input at *now*; ``None`` when no input is waiting."""
        runtime = self.runtime
        mailbox = self.mailbox
        while True:
            if runtime.commands:
                return runtime.next_command(now)
            if mailbox:
                item = mailbox.popleft()
                if self.space is not None:
                    self.space.set()
                    self.space = None
                out = runtime.handle(item, now)
                if out is not None:
                    return out
                continue  # bad input, or nothing to do: take the next one
            deadline = self.core.next_deadline
            if now >= deadline:
                return self.core.tick(now)
            return None

    async def run(self) -> None:
        runtime = self.runtime
        core = self.core
        handled = 0
        while core.role is not Role.TERMINATED:
            out = self.next_output(anyio.current_time())
            if out is not None:
                runtime.apply(out)
                if runtime.must_save:
                    # Nothing else is taken until the state is durable.
                    await runtime.save_pending()
                handled += 1
                if handled % 256 == 0:
                    await checkpoint()  # a long run of input never starves the other tasks
                continue
            # Nothing to do until an input arrives or the deadline passes.  No
            # await lies between the check above and this wait, so nothing
            # that wakes the loop can be missed.
            self.wakeup = anyio.Event()
            with anyio.CancelScope(deadline=core.next_deadline):
                await self.wakeup.wait()
            self.wakeup = None


async def raft_election(
    state: RaftElectionState,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run one node's election until it is removed, ``control`` is closed, or it is cancelled.

    It loads the hard state from ``state.storage``, then reports itself
    started (so ``await tg.start(raft_election, state)`` returns once the node
    takes part), and runs until ``RemoveNode(self_id)`` arrives, ``control`` is
    closed (a leader then hands over first), or the task is cancelled (a
    leader hands over then too).  The role is ``Role.TERMINATED`` afterwards
    and every subscription ends.

    Args:
        state: from ``RaftElectionState.init``; a state runs once.
        task_status: set by ``TaskGroup.start``.

    Raises:
        RuntimeError: this state has already been run.
        ValueError, OSError: the storage could not be loaded (a corrupt file
            is never read as a fresh node), or a save failed (the node stops
            before sending anything that needed it).
    """
    runtime = state.runtime
    runtime.claim()
    try:
        hard_state = await runtime.storage.load()
        tg: TaskGroup
        failure: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                core = runtime.start(
                    hard_state, anyio.current_time(), anyio.current_time, lambda fn, name: tg.start_soon(fn, name=name)
                )
                loop = _Loop(runtime, core)
                tg.start_soon(loop.receive, name=f"almost_raft receive {state.self_id!r}")
                task_status.started()
                try:
                    await loop.run()
                except Exception as exc:
                    # A failed save: end the node and raise it as itself,
                    # not wrapped in the task group's exception group.
                    failure = exc
                else:
                    await runtime.drain()
                tg.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            await runtime.stop()
    finally:
        runtime.finish()
