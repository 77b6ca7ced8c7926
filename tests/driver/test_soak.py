"""A soak of the production driver under the safety checker: random faults, random yields, 10^5 messages.

``LocalCluster(check_safety=True)`` runs the real ``raft_election`` (or an
``ElectionHost``) and checks the safety rules after every step of every node
(one leader per term, one lease at a time, terms never decreasing, one vote
per term across restarts, truthful views).  Here the storages yield at
random (sometimes through a worker thread), every message yields a random
number of times on its way, and a fault schedule crashes and restarts
nodes, stops them gracefully, cuts links, isolates the leader, transfers
leadership and pauses candidacies, until at least ``ALMOST_RAFT_SOAK_MESSAGES``
messages (default 100,000) were delivered on each backend: two thirds through
``raft_election``, one third through an ``ElectionHost``.

asyncio runs in real time with short timeouts; trio runs on its virtual
clock, so the same load costs only CPU.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.lowlevel import checkpoint

from almost_raft import HardState, MemoryStorage, Message, Role
from almost_raft._messages import NodeId
from almost_raft.host import ElectionHost
from almost_raft.testing import LocalCluster

MESSAGES = int(os.environ.get("ALMOST_RAFT_SOAK_MESSAGES", "100000"))
T = 0.010
H = 0.002


class YieldingStorage:
    """A storage in memory that yields at random on every save, sometimes through a worker thread."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._memory = MemoryStorage()

    async def load(self) -> HardState | None:
        return await self._memory.load()

    async def save(self, hard_state: HardState) -> None:
        for _ in range(self._rng.randrange(3)):
            await checkpoint()
        if self._rng.random() < 0.2:
            await anyio.to_thread.run_sync(time.sleep, 0)
        await self._memory.save(hard_state)


def _yielding_network(cluster: LocalCluster, rng: random.Random) -> None:
    """Every message yields 0-2 times on its way (the election's nowait fast path is off then)."""
    network = cluster.network
    deliver = network.deliver

    async def yielding(sender_id: NodeId, peer_id: NodeId, message: Message) -> None:
        for _ in range(rng.randrange(3)):
            await checkpoint()
        await deliver(sender_id, peer_id, message)

    network.deliver = yielding  # type: ignore[method-assign]


async def _fault(cluster: LocalCluster, rng: random.Random) -> str:
    """One random fault (and, later, its repair)."""
    ids = list(cluster.ids)
    running = cluster.running
    leaders = [n for n in running if cluster.states[n].role is Role.LEADER]
    kind = rng.randrange(8)
    if kind == 0 and running:
        await cluster.restart(rng.choice(running))
        return "restart"
    if kind == 1 and running:
        node = rng.choice(running)
        await cluster.crash(node)
        await anyio.sleep(rng.uniform(0, 3 * T))
        await cluster.start(node)
        return "crash, later start"
    if kind == 2 and running:
        node = rng.choice(running)
        await cluster.stop(node)
        await cluster.start(node)
        return "graceful stop, start"
    if kind == 3:
        a, b = rng.sample(ids, 2)
        cluster.cut(a, b, both_ways=rng.random() < 0.5)
        return "cut a link"
    if kind == 4 and leaders:
        cluster.isolate(leaders[0])
        await anyio.sleep(rng.uniform(T, 4 * T))
        cluster.heal_all()
        return "isolate the leader, heal"
    if kind == 5 and leaders:
        cluster.states[leaders[0]].transfer_leadership()
        return "transfer"
    if kind == 6 and running:
        state = cluster.states[rng.choice(running)]
        state.pause_candidacy()
        await anyio.sleep(rng.uniform(0, 3 * T))
        if state.role is not Role.TERMINATED:
            state.resume_candidacy()
        return "pause, resume"
    cluster.heal_all()
    return "heal every link"


@asynccontextmanager
async def _soaked(seed: int, host: ElectionHost | None) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(
        5,
        seed=seed,
        host=host,
        check_safety=True,
        storage=lambda node_id: YieldingStorage(random.Random(f"{seed}/{node_id}")),
        election_timeout=T,
        heartbeat_interval=H,
        message_timeout=T,
    )
    _yielding_network(cluster, random.Random(f"{seed}/network"))
    async with cluster:
        yield cluster


async def _soak(seed: int, host: ElectionHost | None, messages: int) -> tuple[int, int, int]:
    """Fault the cluster until *messages* were delivered; return (delivered, faults, leaders elected)."""
    rng = random.Random(seed)
    faults = 0
    async with _soaked(seed, host) as cluster:
        while cluster.network.delivered < messages:
            await anyio.sleep(rng.uniform(2 * T, 10 * T))
            await _fault(cluster, rng)
            faults += 1
        cluster.heal_all()
        for node_id in cluster.ids:
            if node_id not in cluster.running:
                await cluster.start(node_id)
        for state in cluster.states.values():
            state.resume_candidacy()
        # After the faults end, the cluster agrees on a leader again.
        with anyio.fail_after(30):
            await cluster.wait_for_leader()
        assert cluster.checker is not None
        return cluster.network.delivered, faults, len(cluster.checker.leaders)


async def test_soak_under_the_safety_checker() -> None:
    delivered, faults, leaders = await _soak(1, None, MESSAGES * 2 // 3)
    assert delivered >= MESSAGES * 2 // 3
    assert faults >= 15
    assert leaders >= 8  # the faults did force elections


async def test_soak_through_a_host() -> None:
    host = ElectionHost()
    async with anyio.create_task_group() as tg:
        await tg.start(host.run)
        delivered, faults, leaders = await _soak(2, host, MESSAGES - MESSAGES * 2 // 3)
        tg.cancel_scope.cancel()
    assert delivered >= MESSAGES - MESSAGES * 2 // 3
    assert faults >= 10
    assert leaders >= 5
