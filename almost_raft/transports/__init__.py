"""Transports: ``Node`` implementations and the code that feeds ``control``.

``MemoryNetwork`` wires nodes of one process; ``TcpTransport`` runs them over
TCP (optionally with mutual TLS).  The wire codec is public for transports of
your own: ``encode_message`` turns a message into a frame, ``decode_frame``
turns one whole frame (a datagram, say) back into a message, and
``FrameReader`` cuts a byte stream into messages.  All three raise or return
``WireError`` for anything malformed, never another exception.

``PeerDisconnected(node_id)`` is what a transport sends into a node's
``control`` when the connection to a peer is closed or reset by the peer's
kernel (its process exited or died): the designated successor of a leader
that went away then stands one round trip sooner (docs/specification.md,
"Connection closed").
"""

from __future__ import annotations

from .._messages import PeerDisconnected
from ._wire import FrameReader, WireError, decode_frame, encode_message
from .memory import MemoryNetwork, MemoryNode
from .tcp import TcpNode, TcpStats, TcpTransport, make_tls_contexts

__all__ = (
    "FrameReader",
    "MemoryNetwork",
    "MemoryNode",
    "PeerDisconnected",
    "TcpNode",
    "TcpStats",
    "TcpTransport",
    "WireError",
    "decode_frame",
    "encode_message",
    "make_tls_contexts",
)
