"""``Executor``: carries out the core's ``Output`` in order, with no I/O of its own.

The core returns, for every input, what to save, what to send and what to
publish (``Output``).  The order matters: a new term or vote must be durable
before any message that reflects it leaves the node (Raft paper, Figure 2,
"persistent state ... updated on stable storage before responding to RPCs"),
and an event must not announce a view the node could forget in a crash.

This class is the one place that order lives.  ``raft_election``, the
``ElectionHost``, the ``Simulation`` and ``explore`` all feed it every
``Output`` of a core, so what the safety checker verifies is what users run.
It is synchronous and sans-IO: it does not save anything itself.  The caller
reads ``pending_save``, makes that state durable however it does (an
``await storage.save(...)``, a simulated disk, nothing at all), and then
calls ``saved()``; only then are the sends and events that waited for it
carried out, together with every output submitted after it, in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import final

from ._core import Output
from ._messages import LeaderChanged, Message, NodeId
from ._protocols import HardState


@final
class Executor:
    """Carries out one core's outputs in order: save, then send, then publish.

    Args:
        send: called with ``(to_id, message)`` for each message to send; it
            must not block (queue the message, or hand it to the network).
        publish: called with each ``LeaderChanged`` event to publish.

    An output with nothing to save is carried out at once, unless an earlier
    one still waits for its save: then it waits behind it, so that nothing
    overtakes a save.  Invariant: when something waits, the first waiting
    output is one that needs a save (``pending_save``).
    """

    __slots__ = ("_held", "_publish", "_send")

    def __init__(self, send: Callable[[NodeId, Message], None], publish: Callable[[LeaderChanged], None]) -> None:
        self._send = send
        self._publish = publish
        self._held: deque[Output] = deque()

    @property
    def pending_save(self) -> HardState | None:
        """The state the caller must make durable next, or ``None`` when nothing waits for a save."""
        held = self._held
        return held[0].persist if held else None

    @property
    def waiting(self) -> int:
        """How many outputs wait for a save."""
        return len(self._held)

    def submit(self, out: Output) -> None:
        """Take the next output of the core: carry it out now, or hold it until its save is done."""
        if self._held or out.persist is not None:
            self._held.append(out)
        else:
            self._carry_out(out)

    def saved(self) -> None:
        """Report that ``pending_save`` is durable.

        Carries out the output that waited for it, then every later output up
        to the next one that needs a save (which becomes ``pending_save``).

        Raises:
            RuntimeError: no save was pending.
        """
        held = self._held
        if not held:
            raise RuntimeError("saved() called with no save pending")
        self._carry_out(held.popleft())
        while held and held[0].persist is None:
            self._carry_out(held.popleft())

    def discard(self) -> int:
        """Drop every waiting output, unsent (the save failed, or the node stopped); return how many."""
        count = len(self._held)
        self._held.clear()
        return count

    def _carry_out(self, out: Output) -> None:
        send = self._send
        for to_id, message in out.sends:
            send(to_id, message)
        publish = self._publish
        for event in out.events:
            publish(event)
