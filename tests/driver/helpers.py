"""Tools shared by the driver tests: fake peers, recording storage, and a monitor of safety rules.

The tests never sleep to wait for something.  ``Monitor`` wakes its waiters
whenever something observable happens (a message handed to the in-memory
network, a node's leader view changing, a node starting or stopping) and
checks the safety rules of docs/specification.md at each of those instants: at most one node
holding a lease, at most one leader per term, terms never decreasing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import anyio
import pytest
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from almost_raft import (
    ControlMessage,
    HardState,
    LeaderChanged,
    MemoryStorage,
    Message,
    Node,
    RaftElectionState,
    Role,
    raft_election,
)
from almost_raft._messages import NodeId
from almost_raft.host import ElectionHost
from almost_raft.testing import LocalCluster
from almost_raft.transports.memory import MemoryNetwork

T: Final = 0.1
"""Election timeout: small, because asyncio runs in real time (trio's virtual time makes it free)."""
HB: Final = 0.02
"""Heartbeat interval."""
MT: Final = 0.02
"""Message timeout."""
OPTIONS: Final[dict[str, Any]] = {"election_timeout": T, "heartbeat_interval": HB, "message_timeout": MT}
"""Timing options shared by every test."""

Control = MemoryObjectSendStream[ControlMessage | Message]
LogEntry = tuple[str, NodeId | None, object]
"""``("send", to_id, message)`` or ``("save", None, hard_state)``, in the order they happened."""


# --------------------------------------------------------------- fake peers


class PeerError(Exception):
    """What a ``FakeNode`` in mode ``"raise"`` raises."""


class FakeNode:
    """A ``Node`` for tests: records what it is asked to send, then forwards, hangs or raises.

    Args:
        node_id: the peer id this handle claims.
        inner: a real handle to forward to after recording (``None``: the message goes nowhere).
        log: a shared log to append ``("send", node_id, message)`` to.
        mode: ``"forward"`` (to *inner*, if any), ``"hang"`` (never return) or
            ``"raise"`` (raise ``PeerError``); it may be changed at any time.
    """

    def __init__(
        self,
        node_id: NodeId,
        *,
        inner: Node | None = None,
        log: list[LogEntry] | None = None,
        mode: Literal["forward", "hang", "raise"] = "forward",
    ) -> None:
        self._node_id = node_id
        self.inner = inner
        self.log = log
        self.mode = mode
        self.sent: list[Message] = []

    def __repr__(self) -> str:
        return f"FakeNode({self._node_id!r}, mode={self.mode!r})"

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    async def send_message(self, message: Message) -> None:
        self.sent.append(message)
        if self.log is not None:
            self.log.append(("send", self._node_id, message))
        if self.mode == "hang":
            await anyio.sleep_forever()
        if self.mode == "raise":
            raise PeerError(f"peer {self._node_id!r} is broken")
        if self.inner is not None:
            await self.inner.send_message(message)


class RecordingStorage:
    """A ``Storage`` that logs every completed ``save``; each save takes *delay* seconds, like an fsync."""

    def __init__(self, log: list[LogEntry], *, delay: float = 0.0) -> None:
        self.inner = MemoryStorage()
        self.log = log
        self.delay = delay

    async def load(self) -> HardState | None:
        return await self.inner.load()

    async def save(self, hard_state: HardState) -> None:
        # Slow on purpose: a driver that did not wait for the save before
        # sending would let the senders run first, and the log would show it.
        await anyio.sleep(self.delay)
        await self.inner.save(hard_state)
        self.log.append(("save", None, hard_state))


class FailingStorage:
    """A ``Storage`` whose ``load`` raises, like an unreadable state file."""

    async def load(self) -> HardState | None:
        raise OSError("state file unreadable")

    async def save(self, hard_state: HardState) -> None:
        raise AssertionError("save must not be called after a failed load")


# ------------------------------------------------------------------ monitor


class Monitor:
    """Wakes waiters at every observable change and checks the safety rules each time.

    Args:
        states: returns the states to check (called at every check, so that
            restarted nodes are seen).
    """

    def __init__(self, states: Callable[[], Iterable[RaftElectionState]]) -> None:
        self._states = states
        self._event = anyio.Event()
        self._leader_of_term: dict[int, NodeId] = {}
        self._last_term: dict[int, tuple[RaftElectionState, int]] = {}
        self.violations: list[str] = []
        self.checks = 0
        self.deliveries: list[tuple[NodeId, NodeId, Message]] = []
        """Every message handed to the network, delivered or lost: ``(from, to, message)``."""
        self.on_delivery: list[Callable[[NodeId, NodeId, Message], None]] = []
        """Extra checks run as each message is handed to the network, before it arrives."""
        self.on_change: list[Callable[[], None]] = []
        """Extra hooks run at every change."""

    def check(self) -> None:
        """Check the safety rules now; violations are kept for ``assert_safe``."""
        self.checks += 1
        states = list(self._states())
        holders = [s.self_id for s in states if s.holds_lease]
        if len(holders) > 1:
            self.violations.append(f"at {anyio.current_time():.4f} several nodes hold a lease: {holders}")
        for s in states:
            if s.role is Role.LEADER:
                first = self._leader_of_term.setdefault(s.term, s.self_id)
                if first != s.self_id:
                    self.violations.append(f"two leaders in term {s.term}: {first!r} and {s.self_id!r}")
            _, last = self._last_term.get(id(s), (s, 0))
            if s.term < last:
                self.violations.append(f"node {s.self_id!r}: term went down from {last} to {s.term}")
            # Keep the state alive in the dict so that its id() is never reused.
            self._last_term[id(s)] = (s, max(last, s.term))

    def notify(self) -> None:
        """Something happened: check, then wake every waiter."""
        self.check()
        for hook in self.on_change:
            hook()
        self._event.set()
        self._event = anyio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until *predicate* holds, re-checking it at every change (bound it with ``fail_after``)."""
        while True:
            event = self._event
            if predicate():
                return
            await event.wait()

    def tap(self, network: MemoryNetwork) -> None:
        """Observe every message *network* carries (delivered or lost)."""
        deliver = network.deliver

        async def tapped(sender_id: NodeId, peer_id: NodeId, message: Message) -> None:
            self.deliveries.append((sender_id, peer_id, message))
            for hook in self.on_delivery:
                hook(sender_id, peer_id, message)
            await deliver(sender_id, peer_id, message)
            self.notify()

        network.deliver = tapped  # type: ignore[method-assign]

    async def follow(self, state: RaftElectionState) -> None:
        """Notify at every leader view change of *state* (run it in a task group)."""
        with state.subscribe() as events:
            async for _ in events:
                self.notify()
        self.notify()

    async def follow_cluster(self, cluster: LocalCluster) -> None:
        """Notify at every change ``cluster`` reports (run it in a task group)."""
        while True:
            await cluster.wait_changed()
            self.notify()

    def count(
        self, kind: type[object], *, sender: NodeId | None = None, to: NodeId | None = None, since: int = 0
    ) -> int:
        """How many messages of *kind* went from *sender* to *to* (``None``: any) after delivery number *since*."""
        return sum(
            1
            for s, p, m in self.deliveries[since:]
            if isinstance(m, kind) and (sender is None or s == sender) and (to is None or p == to)
        )

    def assert_safe(self) -> None:
        """Fail with every violation seen so far."""
        self.check()
        assert not self.violations, "\n".join(self.violations[:20])


@asynccontextmanager
async def local_cluster(
    nodes: int | Sequence[NodeId] = 3, *, seed: int | None = 1, **options: Any
) -> AsyncIterator[tuple[LocalCluster, Monitor]]:
    """A started ``LocalCluster`` with the shared timing, and a ``Monitor`` of it.

    The safety rules are checked at every change and once more at the end.
    """
    cluster = LocalCluster(nodes, seed=seed, **{**OPTIONS, **options})
    monitor = Monitor(lambda: list(cluster.states.values()))
    monitor.tap(cluster.network)
    async with cluster, anyio.create_task_group() as tg:
        tg.start_soon(monitor.follow_cluster, cluster)
        yield cluster, monitor
        monitor.assert_safe()
        tg.cancel_scope.cancel()


# ---------------------------------------------------- hand-built clusters


def make_state(
    network: MemoryNetwork,
    node_id: NodeId,
    peers: Iterable[Node] = (),
    **options: Any,
) -> tuple[RaftElectionState, Control]:
    """Build a node with the shared timing and register its ``control`` with *network*."""
    state, control = RaftElectionState.init(node_id, nodes=peers, **{**OPTIONS, **options})
    network.register(node_id, control)
    return state, control


def memory_peers(network: MemoryNetwork, node_id: NodeId, ids: Iterable[NodeId]) -> list[Node]:
    """Handles from *node_id* to every other id in *ids*."""
    return [network.node(p, sender_id=node_id) for p in ids if p != node_id]


async def run_all(tg: TaskGroup, states: Iterable[RaftElectionState], monitor: Monitor) -> None:
    """Start every election in *tg*, each followed by *monitor*."""
    for state in states:
        await tg.start(raft_election, state)
        tg.start_soon(monitor.follow, state)


def agreed(states: Iterable[RaftElectionState]) -> LeaderChanged | None:
    """The ``(term, leader)`` every state agrees on, the leader being one of them and leading; else ``None``."""
    states = list(states)
    views = {(s.term, s.leader_id) for s in states}
    if len(views) != 1:
        return None
    ((term, leader),) = views
    by_id = {s.self_id: s for s in states}
    if leader is None or leader not in by_id or by_id[leader].role is not Role.LEADER:
        return None
    return LeaderChanged(term, leader)


async def wait_agreed(monitor: Monitor, states: Sequence[RaftElectionState], *, after_term: int = -1) -> LeaderChanged:
    """Wait until every state of *states* knows the same leader, of a term above *after_term*."""
    result: list[LeaderChanged] = []

    def done() -> bool:
        view = agreed(states)
        if view is None or view.term <= after_term:
            return False
        result.append(view)
        return True

    await monitor.wait_until(done)
    return result[-1]


# ------------------------------------------------------------------- misc


def view(state: RaftElectionState) -> tuple[Role, int, NodeId | None, NodeId | None]:
    """The part of ``status()`` that bad input must never change: role, term, leader, vote."""
    status = state.status()
    return status.role, status.term, status.leader_id, status.voted_for


async def feed(control: Control, item: object) -> None:
    """Send anything, even what the types forbid, into *control*."""
    await control.send(item)  # type: ignore[arg-type]


def warnings_about(caplog: pytest.LogCaptureFixture, node_id: NodeId, text: str = "") -> list[logging.LogRecord]:
    """The WARNING records of the ``almost_raft`` logger about *node_id* that contain *text*."""
    return [
        r
        for r in caplog.records
        if r.name == "almost_raft"
        and r.levelno >= logging.WARNING
        and r.getMessage().startswith(f"node {node_id!r} ")
        and text in r.getMessage()
    ]


def is_trio(anyio_backend_name: str) -> bool:
    """Whether the test runs on trio's virtual clock, where time bounds can be asserted exactly."""
    return anyio_backend_name == "trio"


@asynccontextmanager
async def running_host() -> AsyncIterator[ElectionHost]:
    """An ``ElectionHost`` whose ``run`` task runs for the duration."""
    host = ElectionHost()
    async with anyio.create_task_group() as tg:
        await tg.start(host.run)
        yield host
        tg.cancel_scope.cancel()
