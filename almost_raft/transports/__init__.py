"""Transports: ``Node`` implementations and the code that feeds ``control``."""

from __future__ import annotations

from ._wire import WireError, decode_frame, encode_message
from .memory import MemoryNetwork, MemoryNode
from .tcp import TcpNode, TcpStats, TcpTransport, make_tls_contexts

__all__ = (
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
