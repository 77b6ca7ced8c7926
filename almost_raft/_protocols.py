"""The two protocols an application implements: ``Node`` and ``Storage``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, final, runtime_checkable

from ._messages import MAX_TERM, Message, NodeId, _check_term, check_node_id


@runtime_checkable
class Node(Protocol):
    """A peer, as the application's transport reaches it.

    ``send_message`` should hand the message to the network and return; the
    election bounds every call by ``message_timeout`` and runs it apart from
    the election loop, so a slow or dead peer never delays the others.  An
    exception it raises is logged and counted as a lost message.  Calls for
    different peers run concurrently; calls for one peer never overlap, and
    come in the order the messages were sent.

    Optional fast path: a ``Node`` may also have a plain (not ``async``)
    method ``send_message_nowait(message) -> None`` that hands the message
    over without waiting (to a queue of its own, or to a socket buffer).
    When it has one, the election calls it from the election's own task
    whenever nothing is queued for that peer, and saves a task switch per
    message.  It must never block.  Raising ``anyio.WouldBlock`` means "not
    now": the message then goes through ``send_message``, in order.  Any
    other exception is a lost message, logged and counted like a failing
    ``send_message``.  ``MemoryNode`` and ``TcpNode`` have it.
    """

    @property
    def node_id(self) -> NodeId:
        """The peer's id: a ``str`` or an ``int``, unique in the cluster."""
        ...

    async def send_message(self, message: Message) -> None:
        """Send *message* to this peer."""
        ...


@final
@dataclass(frozen=True, slots=True)
class HardState:
    """What a node must remember across restarts.

    Attributes:
        term: the latest term this node has seen, at most ``MAX_TERM``
            (``2**62``): a node never holds a larger one.
        voted_for: the candidate it voted for in ``term``, or ``None``.
    """

    term: int
    voted_for: NodeId | None = None

    def __post_init__(self) -> None:
        _check_term("HardState", "term", self.term)
        if self.term > MAX_TERM:
            raise ValueError(
                f"HardState.term must be at most MAX_TERM (2**62), got {self.term}: "
                "no node ever holds such a term (docs/specification.md, 'Terms have no dead end')"
            )
        if self.voted_for is not None:
            check_node_id(self.voted_for, "HardState.voted_for")


@runtime_checkable
class Storage(Protocol):
    """Persistence of ``HardState``.

    ``save`` must not return before the state is durable: the election sends
    nothing that reflects a new term or vote until ``save`` has returned.
    """

    async def load(self) -> HardState | None:
        """Return the saved state, or ``None`` when nothing was ever saved."""
        ...

    async def save(self, hard_state: HardState) -> None:
        """Persist *hard_state*, replacing what was saved before."""
        ...
