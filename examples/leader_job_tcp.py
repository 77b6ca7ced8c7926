"""A leader-only job over TCP in one call, with ``almost_raft.node.run_node`` (the README recipe).

Run three of them, one per terminal; exactly one prints "working" at any time::

    python examples/leader_job_tcp.py a 127.0.0.1:7001 b=127.0.0.1:7002 c=127.0.0.1:7003
    python examples/leader_job_tcp.py b 127.0.0.1:7002 a=127.0.0.1:7001 c=127.0.0.1:7003
    python examples/leader_job_tcp.py c 127.0.0.1:7003 a=127.0.0.1:7001 b=127.0.0.1:7002

Ctrl-C or SIGTERM stops one: its job ends first, then it hands leadership over
and another node's job starts, with a higher term.  Each node keeps its term
and vote in ``<id>.state`` in the current directory.
"""

from __future__ import annotations

import sys

import anyio

from almost_raft.leadership import Lease
from almost_raft.node import run_node


async def job(lease: Lease) -> None:
    while True:  # runs only while this node holds the lease; cancelled as soon as it is lost
        lease.check()  # right before each side effect; pass lease.term on as the fencing token
        print(f"{lease.leader_id}: term {lease.term}, working", flush=True)
        await anyio.sleep(0.2)


async def main() -> None:
    node_id, listen, *peers = sys.argv[1:]  # a 127.0.0.1:7001 b=127.0.0.1:7002 c=127.0.0.1:7003
    await run_node(job, node_id=node_id, listen=listen, peers=peers, storage=f"{node_id}.state")


if __name__ == "__main__":
    anyio.run(main)
