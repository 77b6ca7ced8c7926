"""Transports: ``Node`` implementations and the code that feeds ``control``.

``MemoryNetwork`` wires nodes of one process; ``TcpTransport`` runs them over
TCP (optionally with mutual TLS).  The wire codec is public for transports of
your own: ``encode_message`` turns a message into a frame, ``decode_frame``
turns one whole frame (a datagram, say) back into a message, and
``FrameReader`` cuts a byte stream into messages.  All three raise or return
``WireError`` for anything malformed, never another exception.
"""

from __future__ import annotations

from ._wire import FrameReader, WireError, decode_frame, encode_message
from .memory import MemoryNetwork, MemoryNode
from .tcp import TcpNode, TcpStats, TcpTransport, make_tls_contexts

__all__ = (
    "FrameReader",
    "MemoryNetwork",
    "MemoryNode",
    "TcpNode",
    "TcpStats",
    "TcpTransport",
    "WireError",
    "decode_frame",
    "encode_message",
    "make_tls_contexts",
)
