"""An in-memory transport: nodes in one process, wired through their ``control`` streams.

``MemoryNetwork`` is the switch: each node registers its ``control`` stream,
and ``MemoryNode`` handles deliver into the receiver's stream.  Links can be
cut and healed, one way or both, to test partitions in one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._messages import ControlMessage, Message, NodeId
from .._state import RaftElectionState

if TYPE_CHECKING:
    from ..host import ElectionHost


@final
class MemoryNetwork:
    """Connects nodes of one process.

    Args:
        latency: one-way delay in seconds added to every message (0: none).
    """

    def __init__(self, latency: float = 0.0) -> None:
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency}")
        self.latency = latency
        self._controls: dict[NodeId, MemoryObjectSendStream[ControlMessage | Message]] = {}
        self._direct: dict[NodeId, tuple[ElectionHost, RaftElectionState]] = {}
        self._cut: set[tuple[NodeId, NodeId]] = set()
        self.delivered = 0
        """Messages handed to a receiver's ``control``."""
        self.dropped = 0
        """Messages lost: link cut, receiver absent or its ``control`` full or closed."""

    def register(
        self,
        node_id: NodeId,
        control: MemoryObjectSendStream[ControlMessage | Message],
        *,
        host: ElectionHost | None = None,
        state: RaftElectionState | None = None,
    ) -> None:
        """Deliver messages for *node_id* into *control* (replaces an earlier registration).

        Args:
            node_id: the receiving node.
            control: its ``control`` stream.
            host: the ``ElectionHost`` that runs the node's election, and
            state: the node's state.  With both, a message goes straight
                into the node's input in the host, without a task switch (the
                same checks and counters as through ``control``); thousands of
                nodes in one process then cost a fraction of the CPU.  Without
                them, or while the host does not run that election, messages
                go through ``control``.
        """
        if (host is None) != (state is None):
            raise ValueError("give both host and state, or neither")
        self._controls[node_id] = control
        if host is None or state is None:
            self._direct.pop(node_id, None)
        else:
            self._direct[node_id] = (host, state)

    def unregister(self, node_id: NodeId) -> None:
        """Take *node_id* off the network, as a crashed process: nothing reaches it, nothing leaves it."""
        self._controls.pop(node_id, None)
        self._direct.pop(node_id, None)

    def node(self, peer_id: NodeId, *, sender_id: NodeId) -> MemoryNode:
        """Return the handle *sender_id* uses to reach *peer_id*."""
        return MemoryNode(self, peer_id, sender_id)

    def cut(self, a: NodeId, b: NodeId, *, both_ways: bool = True) -> None:
        """Drop every message from *a* to *b* (and from *b* to *a* unless ``both_ways=False``)."""
        self._cut.add((a, b))
        if both_ways:
            self._cut.add((b, a))

    def heal(self, a: NodeId, b: NodeId, *, both_ways: bool = True) -> None:
        """Undo ``cut``."""
        self._cut.discard((a, b))
        if both_ways:
            self._cut.discard((b, a))

    def isolate(self, node_id: NodeId, others: list[NodeId]) -> None:
        """Cut every link between *node_id* and *others*."""
        for other in others:
            if other != node_id:
                self.cut(node_id, other)

    def heal_all(self) -> None:
        """Heal every cut link."""
        self._cut.clear()

    def connected(self, a: NodeId, b: NodeId) -> bool:
        """Whether messages from *a* reach *b*."""
        return (a, b) not in self._cut

    async def deliver(self, sender_id: NodeId, peer_id: NodeId, message: Message) -> None:
        """Carry *message* from *sender_id* to *peer_id*, or lose it."""
        if self.latency > 0:
            await anyio.sleep(self.latency)
        self.deliver_nowait(sender_id, peer_id, message)

    def deliver_nowait(self, sender_id: NodeId, peer_id: NodeId, message: Message) -> None:
        """Carry *message* from *sender_id* to *peer_id* at once (ignoring ``latency``), or lose it."""
        controls = self._controls
        control = controls.get(peer_id)
        if control is None or sender_id not in controls or (self._cut and (sender_id, peer_id) in self._cut):
            self.dropped += 1
            return
        direct = self._direct.get(peer_id) if self._direct else None
        if direct is not None:
            host, state = direct
            taken = host.deliver_nowait(state, message)
            if taken is not None:
                if taken:
                    self.delivered += 1
                else:
                    self.dropped += 1
                return
        try:
            control.send_nowait(message)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.dropped += 1
        else:
            self.delivered += 1


@final
class MemoryNode:
    """A ``Node`` reached through a ``MemoryNetwork``.

    Args:
        network: the network carrying the messages.
        node_id: the peer this handle reaches.
        sender_id: the node that uses this handle (for cut links).
    """

    __slots__ = ("_network", "_node_id", "_sender_id")

    def __init__(self, network: MemoryNetwork, node_id: NodeId, sender_id: NodeId) -> None:
        self._network = network
        self._node_id = node_id
        self._sender_id = sender_id

    def __repr__(self) -> str:
        return f"MemoryNode({self._node_id!r}, from {self._sender_id!r})"

    @property
    def node_id(self) -> NodeId:
        """The id of the peer this handle reaches."""
        return self._node_id

    async def send_message(self, message: Message) -> None:
        """Deliver *message* to the peer (lost if the link is cut or the peer is down)."""
        await self._network.deliver(self._sender_id, self._node_id, message)

    def send_message_nowait(self, message: Message) -> None:
        """Deliver *message* at once, without waiting (the optional fast path of ``Node``).

        The election calls this instead of ``send_message`` when nothing is
        queued for the peer.  Delivery into the peer's ``control`` never
        waits: a full buffer loses the message.

        Raises:
            anyio.WouldBlock: the network has a ``latency``, or its ``deliver``
                was wrapped (a test's tap, which must see every message): use
                ``send_message``.
        """
        network = self._network
        if network.latency > 0 or "deliver" in network.__dict__:
            raise anyio.WouldBlock
        network.deliver_nowait(self._sender_id, self._node_id, message)
