"""``Simulation``: a deterministic, discrete-event simulator of an almost_raft cluster.

The simulator drives the real election cores (``almost_raft._core.Election``,
the same class the anyio driver runs) in virtual time, with no event loop.
One seed fixes everything: each node's random timeouts, every message delay,
loss and duplicate, and the random fault schedule.  Events run in order of
(virtual time, creation order), so the same seed replays the same run step
for step.

Time: the simulator keeps one *true* virtual clock.  Each node sees its own
clock, ``offset + rate * true_time``, which drifts when ``rate != 1``; the
core is given that local time on every call, and its deadlines are turned
back into true time to schedule them.  The safety checker compares leases in
true time.

After every step of every node the ``SafetyChecker`` checks the safety
rules of docs/specification.md; the first broken one stops the run with a ``SafetyViolation``
that names the seed and shows the last relevant steps.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, final

from .._config import Config, make_config
from .._core import Election, Output
from .._executor import Executor
from .._messages import LeaderChanged, Message, NodeId, Role, check_node_id
from .._protocols import HardState
from ._faults import FaultInjector, LinkFaults, RandomFaults
from ._safety import SafetyChecker, SafetyViolation, Transcript, Violation

NodeStatus = Literal["up", "paused", "crashed"]

_DELIVER = 0
_TICK = 1
_CALL = 2
_INF = math.inf

# A queued event: (true time, sequence number, kind, node id, a, b).
_Event = tuple[float, int, int, NodeId, object, object]

_core_logger = logging.getLogger("almost_raft")


@contextmanager
def core_logging(enabled: bool) -> Iterator[None]:
    """Silence the ``almost_raft`` logger for the duration, unless *enabled*.

    A simulation runs millions of steps; the core's log lines (a warning on
    every check-quorum step-down) would cost more than the steps themselves.
    The transcript records what happened instead.
    """
    if enabled or _core_logger.disabled:
        yield
        return
    _core_logger.disabled = True
    try:
        yield
    finally:
        _core_logger.disabled = False


@final
@dataclass(slots=True)
class SimStats:
    """What a simulation has done so far; each counter only grows."""

    deliveries: int = 0
    """Messages handed to a core (``Election.step``), duplicates included."""
    ticks: int = 0
    """Timer firings handed to a core (``Election.tick``)."""
    sent: int = 0
    """Messages the cores asked to send."""
    lost: int = 0
    """Messages lost by a lossy link."""
    cut: int = 0
    """Messages dropped by a cut link."""
    to_crashed: int = 0
    """Messages that reached a crashed node."""
    duplicated: int = 0
    """Extra copies made by a duplicating link."""
    faults: int = 0
    """Faults and repairs applied (crashes, partitions, heals, ...)."""


@final
class SimNode:
    """One simulated node: its core, its status, its clock and its storage."""

    __slots__ = (
        "backlog",
        "config",
        "core",
        "executor",
        "led_term",
        "node_id",
        "offset",
        "rate",
        "restarts",
        "rng",
        "saved",
        "status",
        "tick_deadline",
        "tick_gen",
    )

    def __init__(
        self, node_id: NodeId, config: Config, rng: random.Random, core: Election, rate: float, offset: float
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.rng = rng
        self.core = core
        """The current incarnation's core (kept after a crash, for inspection)."""
        self.executor: Executor | None = None
        """Carries out the current incarnation's outputs (the driver's executor)."""
        self.status: NodeStatus = "up"
        self.rate = rate
        self.offset = offset
        self.saved: HardState | None = None
        """What the node's storage holds."""
        self.backlog: list[tuple[NodeId, Message]] = []
        self.tick_deadline = math.nan
        self.tick_gen = 0
        self.led_term = -1
        self.restarts = 0

    def local(self, true_time: float) -> float:
        """This node's clock reading at *true_time*."""
        return self.offset + self.rate * true_time

    def true(self, local_time: float) -> float:
        """The true time at which this node's clock reads *local_time*."""
        return (local_time - self.offset) / self.rate


@final
class Simulation:
    """A cluster of election cores in virtual time, with faults and safety checks.

    Args:
        nodes: how many nodes (ids ``"a"``, ``"b"``, ..., or ``"n1"``, ``"n2"``,
            ... beyond 26) or their ids.
        seed: the one seed of the run (an ``int`` or a ``str``).
        election_timeout: ``T`` in seconds.
        election_timeout_max: the top of the timeout range (default ``2 * T``).
        heartbeat_interval: default ``T / 3``.
        pre_vote, check_quorum, split_vote_retry, successor, overload_backoff:
            the core's switches (``make_config``).
        disconnect_notice: model a transport that sees connections close:
            when a node crashes (or restarts), every running peer is told
            ``PeerDisconnected`` one link delay later, unless the link is cut
            (the kernel of the crashed node closed its connections).
        clock_drift: the drift bound the nodes are configured with; their
            lease lasts ``T * (1 - d) / (1 + d)``.
        true_drift: how much the simulated clocks really drift: each node's
            clock runs at a rate drawn from ``[1 - true_drift, 1 + true_drift]``
            (and gets a random offset).  The lease is safe while
            ``true_drift <= clock_drift``.
        link: how every link behaves unless ``set_link`` says otherwise.
        faults: a random fault schedule, or ``None`` for scripted faults only.
        check_safety: check the safety rules after every step.
        transcript_limit: how many recent steps to keep (``None``: all).
        log: let the cores log on the ``almost_raft`` logger while running
            (off by default: the transcript tells the story at less cost).

    Drive it with ``run_for``, ``run_until``, ``run_until_true`` or
    ``run_deliveries``, and script faults with ``crash``, ``restart``,
    ``pause``, ``resume``, ``cut``, ``isolate``, ``partition``,
    ``partial_partition``, ``set_link``, ``set_clock_rate``, and control
    actions with ``transfer_leadership``, ``remove_peer``, ``add_peer`` and
    ``peer_disconnected``, directly or at a virtual time with ``at``/``after``.

    Raises:
        SafetyViolation: from any ``run_*`` call or fault, when a rule breaks.
    """

    def __init__(
        self,
        nodes: int | Sequence[NodeId] = 3,
        *,
        seed: int | str = 0,
        election_timeout: float = 0.150,
        election_timeout_max: float | None = None,
        heartbeat_interval: float | None = None,
        pre_vote: bool = True,
        check_quorum: bool = True,
        split_vote_retry: bool = True,
        successor: bool = True,
        overload_backoff: bool = True,
        disconnect_notice: bool = False,
        clock_drift: float = 0.01,
        true_drift: float = 0.0,
        link: LinkFaults | None = None,
        faults: RandomFaults | None = None,
        check_safety: bool = True,
        transcript_limit: int | None = 2000,
        log: bool = False,
    ) -> None:
        if isinstance(nodes, int):
            ids: list[NodeId] = [chr(ord("a") + i) if nodes <= 26 else f"n{i + 1}" for i in range(nodes)]
        else:
            ids = list(nodes)
        if not ids:
            raise ValueError("a simulation needs at least one node")
        for node_id in ids:
            check_node_id(node_id, "node id")
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate node ids in {ids!r}")
        if not (0 <= true_drift < 0.5):
            raise ValueError("true_drift must be in [0, 0.5)")
        self.seed = seed
        self.log = log
        self.disconnect_notice = disconnect_notice
        self.node_ids: tuple[NodeId, ...] = tuple(ids)
        self.clock_drift = clock_drift
        self.true_drift = true_drift
        self.stats = SimStats()
        self.checker: SafetyChecker | None = SafetyChecker() if check_safety else None
        self.transcript = Transcript(transcript_limit)
        self.violation: Violation | None = None
        self.leader_changes: list[tuple[float, NodeId, LeaderChanged]] = []
        """Every ``LeaderChanged`` a node emitted: (true time, node, event)."""
        self.elections: list[tuple[float, int, NodeId]] = []
        """Every election won: (true time, term, winner)."""
        self._candidates: dict[int, dict[NodeId, None]] = {}
        self._now = 0.0
        self._seq = 0
        self._heap: list[_Event] = []
        self._cuts: dict[tuple[NodeId, NodeId], None] = {}
        self._links: dict[tuple[NodeId, NodeId], LinkFaults] = {}
        self._default_link = link if link is not None else LinkFaults()
        self._net_rng = random.Random(f"{seed}/network")
        clock_rng = random.Random(f"{seed}/clocks")
        self._nodes: dict[NodeId, SimNode] = {}
        for node_id in ids:
            config = make_config(
                node_id,
                election_timeout=election_timeout,
                election_timeout_max=election_timeout_max,
                heartbeat_interval=heartbeat_interval,
                min_nodes=len(ids),
                max_nodes=max(len(ids), 1024),
                peer_ids=[i for i in ids if i != node_id],
                pre_vote=pre_vote,
                check_quorum=check_quorum,
                split_vote_retry=split_vote_retry,
                successor=successor,
                overload_backoff=overload_backoff,
                clock_drift=clock_drift,
                warn=False,
            )
            rng = random.Random(f"{seed}/node/{node_id!r}")
            rate, offset = 1.0, 0.0
            if true_drift > 0:
                rate = clock_rng.uniform(1 - true_drift, 1 + true_drift)
                offset = clock_rng.uniform(0.0, 10.0)
            core = self._new_core(config, rng, None, offset)
            self._nodes[node_id] = SimNode(node_id, config, rng, core, rate, offset)
        for node in self._nodes.values():
            self._started(node, "start")
        self.injector: FaultInjector | None = None
        if faults is not None:
            self.injector = FaultInjector(self, faults, random.Random(f"{seed}/faults"))
            self.injector.start()

    # ------------------------------------------------------------------ views

    @property
    def now(self) -> float:
        """The true virtual time, in seconds."""
        return self._now

    def node(self, node_id: NodeId) -> SimNode:
        """The simulated node *node_id*."""
        return self._nodes[node_id]

    def core(self, node_id: NodeId) -> Election:
        """The election core of *node_id*'s current incarnation."""
        return self._nodes[node_id].core

    def status(self, node_id: NodeId) -> NodeStatus:
        """``"up"``, ``"paused"`` or ``"crashed"``."""
        return self._nodes[node_id].status

    def local_time(self, node_id: NodeId) -> float:
        """*node_id*'s clock reading now."""
        return self._nodes[node_id].local(self._now)

    def holds_lease(self, node_id: NodeId) -> bool:
        """Whether *node_id* is up and leads under a valid lease now, by its own clock."""
        node = self._nodes[node_id]
        return node.status == "up" and node.core.holds_lease(node.local(self._now))

    def leader(self) -> NodeId | None:
        """The running node in role ``LEADER`` with the highest term, or ``None``."""
        best: NodeId | None = None
        best_term = -1
        for node in self._nodes.values():
            if node.status == "up" and node.core.role is Role.LEADER and node.core.term > best_term:
                best, best_term = node.node_id, node.core.term
        return best

    def stable_leader(self, among: Sequence[NodeId] | None = None) -> NodeId | None:
        """The leader every running node of *among* (default: all) agrees on, or ``None``.

        All of them must be up, share one term and name one leader, which
        must be one of them and lead that term.
        """
        ids = self.node_ids if among is None else among
        agreed: tuple[int, NodeId | None] | None = None
        for node_id in ids:
            node = self._nodes[node_id]
            if node.status != "up":
                if among is None:
                    continue
                return None
            view = (node.core.term, node.core.leader_id)
            if agreed is None:
                agreed = view
            elif view != agreed:
                return None
        if agreed is None or agreed[1] is None:
            return None
        term, leader = agreed
        if leader is None or leader not in ids:
            return None
        chief = self._nodes.get(leader)
        if chief is None or chief.status != "up" or chief.core.role is not Role.LEADER or chief.core.term != term:
            return None
        return leader

    @property
    def split_votes(self) -> int:
        """Terms in which two or more nodes stood for election and nobody won."""
        won = {term for _, term, _ in self.elections}
        return sum(1 for term, who in self._candidates.items() if len(who) >= 2 and term not in won)

    @property
    def pending_events(self) -> int:
        """How many events are queued (deliveries, timers, scripted actions)."""
        return len(self._heap)

    # ---------------------------------------------------------------- running

    def at(self, when: float, action: Callable[[Simulation], object], label: str = "scripted action") -> None:
        """Run ``action(sim)`` at true virtual time *when* (not before now)."""
        self._push(max(when, self._now), _CALL, "", action, label)

    def after(self, delay: float, action: Callable[[Simulation], object], label: str = "scripted action") -> None:
        """Run ``action(sim)`` *delay* seconds from now."""
        self.at(self._now + delay, action, label)

    def step(self) -> bool:
        """Process the next event; ``False`` when none is left."""
        if not self._heap:
            return False
        self._process(heapq.heappop(self._heap))
        return True

    def run_until(self, when: float) -> None:
        """Process every event up to true time *when*, then set the clock to *when*."""
        self._run(when, None, None)
        self._now = max(self._now, when)

    def run_for(self, duration: float) -> None:
        """Run for *duration* seconds of virtual time."""
        self.run_until(self._now + duration)

    def run_until_true(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Run until ``predicate()`` is true after a step, for at most *timeout* seconds.

        Returns:
            Whether the predicate became true (the clock stops at that step).
        """
        if predicate():
            return True
        deadline = self._now + timeout
        if self._run(deadline, predicate, None):
            return True
        self._now = max(self._now, deadline)
        return False

    def run_deliveries(self, count: int, *, max_time: float = _INF) -> int:
        """Run until *count* more messages were delivered (or *max_time* passed).

        Returns:
            How many were delivered.
        """
        start = self.stats.deliveries
        self._run(max_time, None, start + count)
        return self.stats.deliveries - start

    def _run(self, until: float, predicate: Callable[[], bool] | None, max_deliveries: int | None) -> bool:
        with core_logging(self.log):
            return self._loop(until, predicate, max_deliveries)

    def _loop(self, until: float, predicate: Callable[[], bool] | None, max_deliveries: int | None) -> bool:
        heap = self._heap
        stats = self.stats
        process = self._process
        pop = heapq.heappop
        while heap and heap[0][0] <= until:
            process(pop(heap))
            if predicate is not None and predicate():
                return True
            if max_deliveries is not None and stats.deliveries >= max_deliveries:
                return False
        return False

    def _push(self, when: float, kind: int, node_id: NodeId, a: object, b: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, node_id, a, b))

    def _process(self, event: _Event) -> None:
        when, _, kind, node_id, a, b = event
        self._now = when
        if kind == _DELIVER:
            self._deliver(node_id, a, b)  # type: ignore[arg-type]
        elif kind == _TICK:
            self._tick(node_id, a, b)  # type: ignore[arg-type]
        else:
            a(self)  # type: ignore[operator]

    # ------------------------------------------------------------- messages

    def _send(self, src: NodeId, dst: NodeId, message: Message) -> None:
        stats = self.stats
        stats.sent += 1
        if self._cuts and (src, dst) in self._cuts:
            stats.cut += 1
            self.transcript.record((self._now, "drop", dst, (src, message, "link cut"), None))
            return
        link = self._links.get((src, dst), self._default_link) if self._links else self._default_link
        rng = self._net_rng
        if link.loss and rng.random() < link.loss:
            stats.lost += 1
            self.transcript.record((self._now, "drop", dst, (src, message, "lost"), None))
            return
        delay = link.delay.sample(rng)
        if link.reorder and rng.random() < link.reorder:
            delay += rng.uniform(0.0, link.reorder_delay)
        self._push(self._now + delay, _DELIVER, dst, src, message)
        if link.duplicate and rng.random() < link.duplicate:
            stats.duplicated += 1
            self._push(self._now + link.delay.sample(rng), _DELIVER, dst, src, message)

    def _deliver(self, dst: NodeId, src: NodeId, message: Message) -> None:
        node = self._nodes[dst]
        if self._cuts and (src, dst) in self._cuts:
            self.stats.cut += 1
            self.transcript.record((self._now, "drop", dst, (src, message, "link cut in flight"), None))
            return
        if node.status != "up":
            if node.status == "paused":
                node.backlog.append((src, message))
            else:
                self.stats.to_crashed += 1
                self.transcript.record((self._now, "drop", dst, (src, message, "node down"), None))
            return
        self.stats.deliveries += 1
        out = node.core.step(message, node.local(self._now))
        self._apply(node, out, "deliver", (src, message))

    def _tick(self, node_id: NodeId, gen: int, deadline: float) -> None:
        node = self._nodes[node_id]
        if gen != node.tick_gen:
            return  # superseded
        if node.status != "up":
            node.tick_deadline = math.nan  # schedule again on waking
            return
        local = node.local(self._now)
        self.stats.ticks += 1
        # Rounding in the clock conversion must never show the core an early timer.
        out = node.core.tick(local if local >= deadline else deadline)
        self._apply(node, out, "tick", None)

    def _apply(self, node: SimNode, out: Output, kind: str, detail: object) -> None:
        # The driver's executor carries the output out: saved (at once: the
        # simulated disk never fails or lags), then sent, then published.
        executor = node.executor
        assert executor is not None
        published = len(self.leader_changes)
        executor.submit(out)
        while (hard_state := executor.pending_save) is not None:
            node.saved = hard_state
            executor.saved()
        events = tuple(e for _, _, e in self.leader_changes[published:])
        self._schedule_tick(node, out.next_deadline)
        self._observe(node, kind, detail, events)

    def _new_executor(self, node: SimNode) -> Executor:
        node_id = node.node_id

        def send(to: NodeId, message: Message) -> None:
            self._send(node_id, to, message)

        def publish(event: LeaderChanged) -> None:
            self.leader_changes.append((self._now, node_id, event))

        return Executor(send, publish)

    def _schedule_tick(self, node: SimNode, deadline: float) -> None:
        if deadline != node.tick_deadline:
            node.tick_deadline = deadline
            node.tick_gen += 1
            if deadline != _INF:
                self._push(node.true(deadline), _TICK, node.node_id, node.tick_gen, deadline)

    def _observe(self, node: SimNode, kind: str, detail: object, events: tuple[LeaderChanged, ...] = ()) -> None:
        core = node.core
        now = self._now
        role = core.role
        term = core.term
        expires = core.lease_expires_at
        lease_until = node.true(expires) if expires > -_INF else -_INF
        if node.status == "crashed":
            lease_until = -_INF
        self.transcript.record(
            (now, kind, node.node_id, detail, (role, term, core.voted_for, core.leader_id, lease_until > now))
        )
        if role is Role.LEADER:
            if term > node.led_term:
                node.led_term = term
                self.elections.append((now, term, node.node_id))
        elif role is Role.CANDIDATE and not core.in_pre_vote:
            who = self._candidates.get(term)
            if who is None:
                self._candidates[term] = {node.node_id: None}
            else:
                who[node.node_id] = None
        checker = self.checker
        if checker is not None:
            violation = checker.observe(node.node_id, role, term, core.voted_for, lease_until, now, events)
            if violation is not None:
                self._fail(violation)

    def _fail(self, violation: Violation) -> None:
        self.violation = violation
        raise SafetyViolation(
            violation,
            seed=self.seed,
            transcript=self.transcript.relevant(violation.nodes, violation.term),
            hint=f"replay: the same Simulation arguments with seed={self.seed!r} give the same run",
        )

    # ------------------------------------------------------- nodes and faults

    def _new_core(self, config: Config, rng: random.Random, hard_state: HardState | None, local_now: float) -> Election:
        peers = [i for i in self.node_ids if i != config.self_id]
        return Election(config, peers=peers, hard_state=hard_state, rng=rng, now=local_now)

    def _started(self, node: SimNode, what: str) -> None:
        node.status = "up"
        node.executor = self._new_executor(node)
        node.tick_deadline = math.nan
        self._schedule_tick(node, node.core.next_deadline)
        self._observe(node, what, None)

    def _fault(self, text: str) -> None:
        self.stats.faults += 1
        self.transcript.record((self._now, "fault", None, text, None))

    def crash(self, node_id: NodeId) -> None:
        """Crash *node_id*: it stops at once; messages to it are lost; its storage stays."""
        node = self._nodes[node_id]
        if node.status == "crashed":
            return
        self._fault(f"crash {node_id!r}")
        node.status = "crashed"
        node.tick_gen += 1
        node.backlog.clear()
        if self.checker is not None:
            self.checker.crashed(node_id)
        if self.disconnect_notice:
            self._notify_disconnect(node_id)

    def _notify_disconnect(self, gone: NodeId) -> None:
        """The kernel of *gone* closed its connections: each peer learns it one link delay later (unless cut)."""
        rng = self._net_rng
        for other in self.node_ids:
            if other == gone or (gone, other) in self._cuts:
                continue
            delay = self._links.get((gone, other), self._default_link).delay.sample(rng)
            self.after(
                delay,
                functools.partial(Simulation.peer_disconnected, node_id=other, peer=gone),
                f"{other!r}: connection to {gone!r} closed",
            )

    def restart(self, node_id: NodeId, *, storage: bool = True) -> None:
        """Start *node_id* again (crashing it first if it runs).

        Args:
            node_id: the node.
            storage: come back with the saved term and vote (``True``), or
                with empty storage, as a misconfigured deployment would.
        """
        node = self._nodes[node_id]
        self.crash(node_id)
        self._fault(f"restart {node_id!r} {'from its storage' if storage else 'WITHOUT storage'}")
        if not storage:
            node.saved = None
            if self.checker is not None:
                self.checker.forgot(node_id)
        node.restarts += 1
        node.core = self._new_core(node.config, node.rng, node.saved, node.local(self._now))
        with core_logging(self.log):
            self._started(node, "restart")

    def pause(self, node_id: NodeId) -> None:
        """Freeze *node_id* (a long GC pause, a stopped VM): no timers, messages wait for it."""
        node = self._nodes[node_id]
        if node.status != "up":
            return
        self._fault(f"pause {node_id!r}")
        node.status = "paused"

    def resume(self, node_id: NodeId) -> None:
        """Wake a paused node: its overdue timer fires first, then the messages that waited."""
        node = self._nodes[node_id]
        if node.status != "paused":
            return
        self._fault(f"resume {node_id!r} ({len(node.backlog)} messages waited)")
        with core_logging(self.log):
            self._wake(node)

    def _wake(self, node: SimNode) -> None:
        node_id = node.node_id
        node.status = "up"
        local = node.local(self._now)
        deadline = node.core.next_deadline
        node.tick_deadline = math.nan
        if deadline <= local:
            self.stats.ticks += 1
            self._apply(node, node.core.tick(local), "tick", None)
        else:
            self._schedule_tick(node, deadline)
        backlog, node.backlog = node.backlog, []
        for src, message in backlog:
            if node.status != "up":
                break
            self._deliver(node_id, src, message)

    def set_clock_rate(self, node_id: NodeId, rate: float) -> None:
        """Make *node_id*'s clock run at *rate* from now on (it does not jump)."""
        if not rate > 0:
            raise ValueError(f"a clock rate must be positive, got {rate!r}")
        node = self._nodes[node_id]
        local = node.local(self._now)
        node.rate = rate
        node.offset = local - rate * self._now
        self._fault(f"clock of {node_id!r} now runs at rate {rate:.6f}")
        if node.status == "crashed":
            return
        # Deadlines and the lease end fall at other true times now.
        node.tick_deadline = math.nan
        self._schedule_tick(node, node.core.next_deadline)
        self._observe(node, "clock", None)

    def transfer_leadership(self, node_id: NodeId, target: NodeId | None = None) -> None:
        """Ask *node_id* to hand leadership over (``TransferLeadership``); ignored unless it runs."""
        node = self._nodes[node_id]
        if node.status != "up":
            return
        self._fault(f"{node_id!r}: TransferLeadership({target!r})")
        with core_logging(self.log):
            self._apply(node, node.core.transfer_leadership(target, node.local(self._now)), "control", None)

    def peer_disconnected(self, node_id: NodeId, peer: NodeId) -> None:
        """``PeerDisconnected(peer)`` at *node_id*: its transport saw *peer*'s connection close; ignored unless it runs."""
        node = self._nodes[node_id]
        if node.status != "up":
            return
        self._fault(f"{node_id!r}: PeerDisconnected({peer!r})")
        with core_logging(self.log):
            self._apply(node, node.core.peer_disconnected(peer, node.local(self._now)), "control", None)

    def remove_peer(self, node_id: NodeId, peer: NodeId) -> None:
        """``RemoveNode(peer)`` at *node_id*: *peer* leaves that node's view (only).

        A restart brings the full membership back, as a process restarted
        from its configuration would.
        """
        self._membership(node_id, peer, remove=True)

    def add_peer(self, node_id: NodeId, peer: NodeId) -> None:
        """``AddNode(peer)`` at *node_id*: *peer* joins that node's view (only)."""
        self._membership(node_id, peer, remove=False)

    def _membership(self, node_id: NodeId, peer: NodeId, *, remove: bool) -> None:
        node = self._nodes[node_id]
        if node.status != "up":
            return
        self._fault(f"{node_id!r}: {'RemoveNode' if remove else 'AddNode'}({peer!r})")
        local = node.local(self._now)
        with core_logging(self.log):
            out = node.core.remove_peer(peer, local) if remove else node.core.add_peer(peer, local)
            self._apply(node, out, "control", None)

    def cut(self, a: NodeId, b: NodeId, *, both_ways: bool = True) -> None:
        """Cut the link from *a* to *b* (and back): messages on it, even in flight, are lost."""
        self._fault(f"cut {a!r} {'<->' if both_ways else '->'} {b!r}")
        self._cuts[(a, b)] = None
        if both_ways:
            self._cuts[(b, a)] = None

    def heal(self, a: NodeId, b: NodeId, *, both_ways: bool = True) -> None:
        """Restore the link from *a* to *b* (and back)."""
        self._fault(f"heal {a!r} {'<->' if both_ways else '->'} {b!r}")
        self._cuts.pop((a, b), None)
        if both_ways:
            self._cuts.pop((b, a), None)

    def isolate(self, node_id: NodeId) -> None:
        """Cut *node_id* off from every other node, both ways."""
        self._fault(f"isolate {node_id!r}")
        for other in self.node_ids:
            if other != node_id:
                self._cuts[(node_id, other)] = None
                self._cuts[(other, node_id)] = None

    def partition(self, *groups: Sequence[NodeId]) -> None:
        """Cut every link between different *groups*, both ways (nodes not named keep their links)."""
        self._fault("partition " + " | ".join("{" + ", ".join(repr(i) for i in g) + "}" for g in groups))
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in group:
                    for b in other:
                        self._cuts[(a, b)] = None
                        self._cuts[(b, a)] = None

    def partial_partition(self, node_id: NodeId, reachable: Sequence[NodeId]) -> None:
        """*node_id* keeps its links to *reachable* only; every other link of it is cut, both ways."""
        self._fault(f"partial partition: {node_id!r} reaches only {list(reachable)!r}")
        for other in self.node_ids:
            if other != node_id and other not in reachable:
                self._cuts[(node_id, other)] = None
                self._cuts[(other, node_id)] = None

    def set_link(self, a: NodeId, b: NodeId, faults: LinkFaults, *, both_ways: bool = True) -> None:
        """Make the link from *a* to *b* (and back) behave as *faults* says."""
        self._fault(f"link {a!r} {'<->' if both_ways else '->'} {b!r}: {faults}")
        self._links[(a, b)] = faults
        if both_ways:
            self._links[(b, a)] = faults

    def heal_all(self) -> None:
        """Restore every link: no cuts, and the default link behaviour everywhere."""
        self._fault("heal every link")
        self._cuts.clear()
        self._links.clear()
