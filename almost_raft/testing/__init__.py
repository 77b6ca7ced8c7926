"""Tools for testing code that uses almost_raft, and almost_raft itself.

``LocalCluster`` runs real elections in one process over an in-memory network.
"""

from __future__ import annotations

from ._cluster import LocalCluster

__all__ = ("LocalCluster",)
