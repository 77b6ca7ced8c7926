"""An in-memory transport: nodes in one process, wired through their ``control`` streams.

``MemoryNetwork`` is the switch: each node registers its ``control`` stream,
and ``MemoryNode`` handles deliver into the receiver's stream.  Links can be
cut and healed, one way or both, to test partitions in one process.
"""

from __future__ import annotations

from typing import final

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._messages import ControlMessage, Message, NodeId


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
        self._cut: set[tuple[NodeId, NodeId]] = set()
        self.delivered = 0
        """Messages handed to a receiver's ``control``."""
        self.dropped = 0
        """Messages lost: link cut, receiver absent or its ``control`` full or closed."""

    def register(self, node_id: NodeId, control: MemoryObjectSendStream[ControlMessage | Message]) -> None:
        """Deliver messages for *node_id* into *control* (replaces an earlier registration)."""
        self._controls[node_id] = control

    def unregister(self, node_id: NodeId) -> None:
        """Take *node_id* off the network, as a crashed process: nothing reaches it, nothing leaves it."""
        self._controls.pop(node_id, None)

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
        control = self._controls.get(peer_id)
        if control is None or sender_id not in self._controls or not self.connected(sender_id, peer_id):
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
