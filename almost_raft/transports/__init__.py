"""Transports: ``Node`` implementations and the code that feeds ``control``."""

from __future__ import annotations

from .memory import MemoryNetwork, MemoryNode

__all__ = ("MemoryNetwork", "MemoryNode")
