"""Run work only while this node leads, and stop it before anyone else can lead.

``run_while_leader(state, work)`` waits until this node holds the leader's
lease, runs ``await work(lease)`` inside a cancel scope, and cancels it as soon
as leadership or the lease is lost.  The cancel scope's deadline is the lease's
end, so the work is cancelled at the latest when the lease runs out, which is
before any other node can be elected (voters refuse every candidate for ``T``
after they last heard from this leader, and the lease is shorter than ``T``).

The ``Lease`` passed to the work carries a fencing token: ``(term, leader_id)``,
which grows with every new leader.  Pass it to the systems the work writes to,
so they can refuse a write carrying a smaller token than one already seen.
That protects against what no lease can: a process frozen in the middle of a
side effect (a long GC pause, a stopped VM) that resumes after its lease ended.

Cancellation reaches the work at its next checkpoint (an ``await``); code that
computes for a long time without awaiting cannot be interrupted.  Check
``lease.valid()`` (or call ``lease.check()``) right before each side effect.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import final

import anyio

from ._errors import raise_single
from ._messages import NodeId, Role
from ._state import RaftElectionState

__all__ = ("Lease", "LeaseLost", "leading", "run_while_leader")

logger = logging.getLogger("almost_raft")


class LeaseLost(Exception):
    """Raised by ``Lease.check()`` when the lease is no longer valid."""


@final
@dataclass(frozen=True, slots=True)
class Lease:
    """One stretch of leadership of this node.

    Attributes:
        term: the term this node leads; with ``leader_id`` it is the fencing
            token, and it grows with every new leader.
        leader_id: this node's id.
    """

    term: int
    leader_id: NodeId
    _state: RaftElectionState

    @property
    def token(self) -> tuple[int, NodeId]:
        """The fencing token ``(term, leader_id)``: compare terms to order leaders."""
        return (self.term, self.leader_id)

    def valid(self) -> bool:
        """Whether this node still leads ``term`` under a valid lease, now."""
        state = self._state
        return state.term == self.term and state.holds_lease

    def remaining(self) -> float:
        """Seconds left on the lease now (0.0 once lost); it is renewed by every acknowledged heartbeat round."""
        if not self.valid():
            return 0.0
        return max(0.0, self._state.lease_expires_at - anyio.current_time())

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lease is valid: call it right before a side effect."""
        if not self.valid():
            raise LeaseLost(f"node {self.leader_id!r} no longer holds the lease of term {self.term}")


async def _wait_for_lease(state: RaftElectionState, *, after: tuple[int, bool] | None = None) -> Lease | None:
    """Wait until this node holds a lease; ``None`` when the election ended first."""
    while True:
        if state.role is Role.TERMINATED:
            return None
        if state.holds_lease and (after is None or state.term > after[0] or not after[1]):
            return Lease(state.term, state.self_id, state)
        await state.wait_changed()


async def _guard(state: RaftElectionState, lease: Lease, scope: anyio.CancelScope) -> None:
    """Keep *scope*'s deadline at the lease's end; cancel it as soon as the lease is lost."""
    while True:
        if not lease.valid():
            scope.cancel()
            return
        scope.deadline = state.lease_expires_at
        await state.wait_changed()


@asynccontextmanager
async def leading(state: RaftElectionState) -> AsyncIterator[Lease]:
    """Wait until this node holds the lease, then run the body while it does.

    The body is cancelled as soon as the lease or leadership is lost (at the
    latest when the lease runs out); the ``async with`` then ends normally.
    Check ``lease.valid()`` afterwards to tell a finished body from a lost lease.
    An exception raised in the body comes out as itself, not wrapped in an
    exception group.

    Raises:
        RuntimeError: the election ended before this node led.

    Example::

        async with leading(state) as lease:
            await do_leader_work(fencing_token=lease.term)
    """
    lease = await _wait_for_lease(state)
    if lease is None:
        raise RuntimeError(f"the election of node {state.self_id!r} ended before it led")
    with anyio.CancelScope(deadline=state.lease_expires_at) as scope:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_guard, state, lease, scope)
                try:
                    yield lease
                finally:
                    tg.cancel_scope.cancel()
        except BaseException as error:
            # The body's exception comes out as itself, not in an exception group.
            raise_single(error)
            raise


async def run_while_leader(
    state: RaftElectionState,
    work: Callable[[Lease], Awaitable[object]],
    *,
    resign_on_error: bool = False,
) -> None:
    """Run ``await work(lease)`` whenever this node leads, until the election ends.

    The work starts once this node holds the lease, and is cancelled as soon
    as leadership or the lease is lost, before any other node can be elected.
    It runs again on the next win (or when a lapsed lease is regained in the
    same term).  A work that returns is not restarted until a new term.

    Args:
        state: the node's state; run ``raft_election(state)`` beside this.
        work: an async callable taking the ``Lease``.
        resign_on_error: when the work raises, hand leadership to another
            node (``state.transfer_leadership()``) so that the work gets a
            chance elsewhere; by default this node keeps leading and runs the
            work again only after its next win.

    An exception raised by the work is logged on the ``almost_raft`` logger and
    never ends the election or this function.  ``LeaseLost`` from
    ``lease.check()`` is the normal end of a lease, not an error: it is logged
    as one INFO line, never resigns, and the work runs again when the lease is
    regained, as a cancelled one does.  Returns when the election ends.
    """
    done_in: tuple[int, bool] | None = None  # (term, the work finished in it)
    while True:
        lease = await _wait_for_lease(state, after=done_in)
        if lease is None:
            return
        finished = False
        lease_lost: LeaseLost | None = None
        logger.info("node %r term %d: leader work starting", state.self_id, lease.term)
        with anyio.CancelScope(deadline=state.lease_expires_at) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_guard, state, lease, scope)
                try:
                    await work(lease)
                    finished = True
                except LeaseLost as exc:
                    if lease.valid():
                        # Not this lease's end (a stale Lease's check, say): an error like any other.
                        finished = True
                        _work_raised(state, lease, resign_on_error)
                    else:
                        # ``lease.check()`` saw the lease end before the guard
                        # cancelled the work: the normal end of a lease, like
                        # the cancellation, and no reason to resign.
                        lease_lost = exc
                except Exception:
                    finished = True
                    _work_raised(state, lease, resign_on_error)
                finally:
                    tg.cancel_scope.cancel()
        if lease_lost is not None:
            logger.info("node %r term %d: leader work stopped: %s", state.self_id, lease.term, lease_lost)
        elif scope.cancelled_caught or not finished:
            logger.info("node %r term %d: leader work cancelled, the lease was lost", state.self_id, lease.term)
        done_in = (lease.term, finished)


def _work_raised(state: RaftElectionState, lease: Lease, resign_on_error: bool) -> None:
    """Log the exception being handled, and resign if asked to."""
    logger.exception("node %r term %d: leader work raised", state.self_id, lease.term)
    if resign_on_error and state.role is Role.LEADER:
        state.transfer_leadership()
