"""``python -m almost_raft``: run one node over TCP (see ``almost_raft._cli``)."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
