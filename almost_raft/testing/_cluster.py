"""``LocalCluster``: N elections in one process over the in-memory transport."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, final

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from .._core import Election
from .._driver import raft_election
from .._messages import ControlMessage, LeaderChanged, Message, NodeId, RemoveNode, Role
from .._protocols import Storage
from .._state import RaftElectionState
from .._storage import MemoryStorage
from ..host import ElectionHost
from ..transports.memory import MemoryNetwork
from ._safety import SafetyChecker, SafetyViolation


@final
class LocalCluster:
    """A cluster of elections in one process, for tests, examples and experiments.

    Every node runs ``raft_election`` in the cluster's task group and reaches the
    others through a ``MemoryNetwork``.  Nodes can be crashed, restarted with
    their storage, stopped gracefully, and links can be cut.

    Args:
        nodes: how many nodes (ids ``"n1"``, ``"n2"``, ...) or their ids.
        seed: seeds each node's ``random.Random`` (``None``: unseeded).
        latency: one-way delay of every message, in seconds.
        host: run the elections in this ``ElectionHost`` (its ``run`` must be
            running) instead of one ``raft_election`` task per node.
        check_safety: check the safety rules after every step of every node
            with a ``SafetyChecker`` (``checker``); the first broken one
            raises ``SafetyViolation`` from the node's election.
        storage: builds each node's storage from its id (default: a
            ``MemoryStorage``); a node keeps its storage across restarts.
        **options: passed to ``RaftElectionState.init`` for every node
            (``election_timeout``, ``heartbeat_interval``, ...).  ``min_nodes``
            defaults to the cluster size, the safe choice.

    Use it as an async context manager::

        async with LocalCluster(5, election_timeout=0.15, heartbeat_interval=0.05) as cluster:
            first = await cluster.wait_for_leader()
    """

    def __init__(
        self,
        nodes: int | Sequence[NodeId] = 3,
        *,
        seed: int | None = None,
        latency: float = 0.0,
        host: ElectionHost | None = None,
        check_safety: bool = False,
        storage: Callable[[NodeId], Storage] | None = None,
        **options: Any,
    ) -> None:
        ids: list[NodeId] = [f"n{i + 1}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
        if not ids:
            raise ValueError("a cluster needs at least one node")
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate node ids in {ids!r}")
        self.ids: tuple[NodeId, ...] = tuple(ids)
        self.network = MemoryNetwork(latency)
        self._seed = seed
        self._options = dict(options)
        self._options.setdefault("min_nodes", len(ids))
        make_storage: Callable[[NodeId], Storage] = storage or (lambda _node_id: MemoryStorage())
        self.storages: dict[NodeId, Storage] = {i: make_storage(i) for i in ids}
        """Each node's storage, kept across its restarts."""
        self.states: dict[NodeId, RaftElectionState] = {}
        self.controls: dict[NodeId, MemoryObjectSendStream[ControlMessage | Message]] = {}
        self._scopes: dict[NodeId, anyio.CancelScope] = {}
        self._tg: TaskGroup | None = None
        self._changed: anyio.Event | None = None
        self._incarnation = 0
        self.host = host
        self.checker: SafetyChecker | None = SafetyChecker() if check_safety else None
        """The safety checker, with ``check_safety=True``."""

    async def __aenter__(self) -> LocalCluster:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        for node_id in self.ids:
            await self.start(node_id)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(exc_type, exc, tb)

    # ------------------------------------------------------------ lifecycle

    def _make_state(self, node_id: NodeId) -> RaftElectionState:
        self._incarnation += 1
        rng = random.Random(None if self._seed is None else f"{self._seed}/{node_id}/{self._incarnation}")
        peers = [self.network.node(p, sender_id=node_id) for p in self.ids if p != node_id]
        state, control = RaftElectionState.init(
            node_id, nodes=peers, storage=self.storages[node_id], rng=rng, **self._options
        )
        self.states[node_id] = state
        self.controls[node_id] = control
        if self.host is None:
            self.network.register(node_id, control)
        else:
            self.network.register(node_id, control, host=self.host, state=state)
        checker = self.checker
        if checker is not None:

            def observe(core: Election, events: tuple[LeaderChanged, ...], now: float) -> None:
                violation = checker.observe(
                    node_id, core.role, core.term, core.voted_for, core.lease_expires_at, now, events
                )
                if violation is not None:
                    raise SafetyViolation(violation, seed=self._seed, transcript=[], hint="a LocalCluster run")

            state.runtime.observer = observe
        return state

    async def start(self, node_id: NodeId) -> None:
        """Start (or restart) *node_id* with its storage; returns once it runs."""
        if self._tg is None:
            raise RuntimeError("use LocalCluster as an async context manager")
        if node_id not in self.storages:
            raise KeyError(f"unknown node {node_id!r}")
        if node_id in self._scopes:
            raise RuntimeError(f"node {node_id!r} is already running")
        state = self._make_state(node_id)
        await self._tg.start(self._run, node_id, state)

    async def _run(self, node_id: NodeId, state: RaftElectionState, *, task_status: TaskStatus[None]) -> None:
        control = self.controls[node_id]
        with anyio.CancelScope() as scope:
            self._scopes[node_id] = scope
            try:
                async with anyio.create_task_group() as tg:
                    if self.host is None:
                        await tg.start(raft_election, state)
                    else:
                        await tg.start(self.host.run_election, state)
                    tg.start_soon(self._watch, state)
                    task_status.started()
            finally:
                if self.checker is not None:
                    self.checker.crashed(node_id)  # a node that is gone holds no lease
                if self._scopes.get(node_id) is scope:
                    del self._scopes[node_id]
                self.network.unregister(node_id)
                control.close()
                self._notify()

    async def _watch(self, state: RaftElectionState) -> None:
        with state.subscribe() as events:
            async for _ in events:
                self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_changed(self) -> None:
        """Wait until any node's leader view changes, or a node starts or stops."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    async def crash(self, node_id: NodeId) -> None:
        """Kill *node_id* at once, as a crashed process: nothing more leaves it, nothing reaches it."""
        self.network.unregister(node_id)
        scope = self._scopes.get(node_id)
        if scope is not None:
            scope.cancel()
        while node_id in self._scopes:
            await self.wait_changed()

    async def stop(self, node_id: NodeId) -> None:
        """Stop *node_id* gracefully with ``RemoveNode(node_id)``: a leader hands over first."""
        if node_id not in self._scopes:
            return
        await self.controls[node_id].send(RemoveNode(node_id))
        while node_id in self._scopes:
            await self.wait_changed()

    async def restart(self, node_id: NodeId) -> None:
        """Crash *node_id* if it runs, then start it again from its storage."""
        await self.crash(node_id)
        await self.start(node_id)

    # -------------------------------------------------------------- network

    def cut(self, a: NodeId, b: NodeId, *, both_ways: bool = True) -> None:
        """Lose every message from *a* to *b* (and back, by default)."""
        self.network.cut(a, b, both_ways=both_ways)

    def heal(self, a: NodeId, b: NodeId, *, both_ways: bool = True) -> None:
        """Undo ``cut``."""
        self.network.heal(a, b, both_ways=both_ways)

    def isolate(self, node_id: NodeId) -> None:
        """Cut every link of *node_id*."""
        self.network.isolate(node_id, list(self.ids))

    def partition(self, *groups: Sequence[NodeId]) -> None:
        """Cut every link between nodes of different *groups*."""
        where = {n: i for i, group in enumerate(groups) for n in group}
        for a in self.ids:
            for b in self.ids:
                if a != b and where.get(a) != where.get(b):
                    self.network.cut(a, b, both_ways=False)

    def heal_all(self) -> None:
        """Heal every link."""
        self.network.heal_all()

    # ---------------------------------------------------------------- views

    @property
    def running(self) -> tuple[NodeId, ...]:
        """The ids of the nodes whose election runs."""
        return tuple(n for n in self.ids if n in self._scopes)

    def agreed_leader(self, among: Sequence[NodeId] | None = None) -> LeaderChanged | None:
        """The ``(term, leader)`` that every node of *among* (default: all running) agrees on, if any."""
        ids = self.running if among is None else tuple(among)
        if not ids:
            return None
        views = {(self.states[n].term, self.states[n].leader_id) for n in ids if n in self._scopes}
        if len(views) != 1 or len(ids) != sum(1 for n in ids if n in self._scopes):
            return None
        ((term, leader),) = views
        if leader is None or leader not in ids or self.states[leader].role is not Role.LEADER:
            return None
        return LeaderChanged(term, leader)

    async def wait_for_leader(self, among: Sequence[NodeId] | None = None, *, after_term: int = -1) -> LeaderChanged:
        """Wait until every node of *among* (default: all running) knows the same leader.

        Args:
            among: the nodes that must agree (the leader must be one of them).
            after_term: only a leader of a term above this one counts.

        Returns:
            ``LeaderChanged(term, leader_id)`` of the agreed leader.

        Wrap it in ``anyio.fail_after`` to bound the wait.
        """
        while True:
            agreed = self.agreed_leader(among)
            if agreed is not None and agreed.term > after_term:
                return agreed
            await self.wait_changed()

    def leaders(self) -> dict[int, set[NodeId]]:
        """Every running node that believes it leads, by term."""
        out: dict[int, set[NodeId]] = {}
        for n in self.running:
            state = self.states[n]
            if state.role is Role.LEADER:
                out.setdefault(state.term, set()).add(n)
        return out
