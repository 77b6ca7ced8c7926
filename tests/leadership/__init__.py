"""Tests of ``almost_raft.leadership``, graceful hand-over, pausing candidacy and ``status()``."""
