"""Bounded exhaustive exploration of a small cluster of real election cores.

``explore`` visits, breadth first, every state a cluster (three nodes by
default) can reach through any interleaving of these steps, and checks the
``SafetyChecker`` rules after every one:

* deliver any message in flight (in any order, after any delay);
* lose any message in flight;
* deliver a copy of a message and keep it in flight (a duplicate; a path
  may hold ``max_duplicates`` of them);
* fire the timer of any node (see the clock models below);
* restart a node from its storage, ask a leader to hand over, and tell a
  node that a peer's connection closed (``PeerDisconnected``, true or not:
  the successor's early pre-vote round), each within a budget, off by
  default (a notice that cannot change its receiver, see
  ``_notice_matters``, is not explored: it would only spend the budget);
* with ``successor_names``, deliver a heartbeat naming the receiver as the
  designated successor when it named another, or naming none when it named
  the receiver: peers that disagree about who was named.

The designated successor (on by default, as in the library) needs no
special timing here: every timer may fire at its deadline or at any later
point of the interleaving, so a successor standing exactly ``T`` after its
last heartbeat, and the others later, are among the paths explored.

Two clock models:

* ``clocks="per-node"`` (the default): every node has its own clock, and
  the only thing that moves it is its own timer firing, which may happen at
  any point of the interleaving.  Clocks are not compared across nodes, so
  this is the fully asynchronous model (any drift, any delay) in which one
  leader per term, one vote per term, monotonic terms and truthful views
  must hold.  The lease rule needs bounded drift and is not checked here.
* ``clocks="shared"``: one clock for all nodes, advanced by one quantum at
  a time (``T`` is ``timeout_quanta`` quanta, the heartbeat interval
  ``T / 2``); a timer fires at its deadline or any time later, and every
  delay is a whole number of quanta.  All five rules are checked, the lease
  rule included.  This model has many more states per term.

The state space is made finite by bounds: states in which some node's term
exceeds ``max_term`` are checked but not expanded; a step that would leave
more than ``max_in_flight`` messages in flight loses the extra ones (losing
messages is allowed anyway); a leader sends at most ``max_heartbeats``
timed heartbeat rounds per term; and, optionally, no path is longer than
``max_depth`` steps.

States are compared with every time taken relative to the clock of its
node: deadlines in the past count as "now", and other past times are
clipped at ``T`` ago.  The cores only compare times with ``now`` plus
offsets of at most ``T``, so states that differ only in those ways behave
alike.  Each state is stored as a 64-bit hash of that canonical form (a
collision, about one chance in 10^7 for a million states, could only hide
states, never report a false violation).

Timeouts are not randomized here (``election_timeout_max == T``): the
exploration chooses the timing itself.  Random timing and bounded clock
drift are the simulator's job.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import operator
import os
import random
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, final

from .._config import Config, make_config
from .._core import CoreCounters, Election, Output
from .._executor import Executor
from .._messages import Heartbeat, LeaderChanged, Message, NodeId, Role
from .._protocols import HardState
from ._safety import SafetyChecker, SafetyViolation, Transcript, Violation
from ._sim import core_logging

_MS = 1e-3  # transcripts show one time quantum as one millisecond
_NEVER = float("inf")

ClockModel = Literal["per-node", "shared"]

# A message in flight: (destination index, sender id, message).
_Item = tuple[int, NodeId, Message]
# An action: what the explorer did, enough to replay it: (kind, argument,
# which choice of the sends that fit in flight was kept).
_Action = tuple[str, object, int]


@final
@dataclass(frozen=True, slots=True)
class ExplorationResult:
    """What ``explore`` found.

    Attributes:
        states: distinct states reached (the initial one included).
        transitions: steps executed (each leads to a new or an already seen state).
        depth: the most steps on a shortest path to any state reached.
        unexpanded: states checked but not expanded: a term passed ``max_term``,
            or the path reached ``max_depth``.
        truncated: sends lost to the ``max_in_flight`` bound.
        max_term_reached: the highest term any node reached.
        leaders_elected: distinct (term, leader) pairs seen.
        elapsed: wall-clock seconds.
        complete: ``False`` when ``max_states`` stopped the search early.
        bounds: the bounds and switches used.
        violation: the first broken rule, or ``None``.
        trace: for a violation, the transcript of a shortest path to it.
    """

    states: int
    transitions: int
    depth: int
    unexpanded: int
    truncated: int
    max_term_reached: int
    leaders_elected: int
    elapsed: float
    complete: bool
    bounds: dict[str, object] = field(default_factory=dict)
    violation: Violation | None = None
    trace: tuple[str, ...] = ()

    def raise_if_violated(self) -> None:
        """Raise ``SafetyViolation`` with the trace if a rule broke."""
        if self.violation is not None:
            raise SafetyViolation(
                self.violation,
                seed=None,
                transcript=list(self.trace),
                hint=f"found by explore({self.bounds}); the trace is a shortest path to the violation",
            )


# ------------------------------------------------------------ core copies

# ``_backoff`` only scales the random part of a timeout, which is zero here
# (``election_timeout_max == T``): states that differ in it alone behave alike.
_SKIP_IN_KEY = frozenset({"config", "counters", "_rng", "_sends", "_events", "_persisted", "_self_id", "_backoff"})
_IMMUTABLE = (int, float, str, bool, type(None), tuple, frozenset, Role, Config, HardState)
# Times the core only ever compares as ``now >= t`` or ``now < t``: once in
# the past, how long ago no longer matters.
_DEADLINES = frozenset(
    {
        "_election_deadline",
        "_sticky_until",
        "heartbeat_deadline",
        "transfer_deadline",
        "transfer_retry_at",
        "lease_expires_at",
    }
)
# The state of the current role (``Election._cand``, ``Election._lead``):
# ``None`` or a small object with ``__slots__`` and ``copy()``.
_ROLE_STATES = frozenset({"_cand", "_lead"})


@final
class _LowDraws(random.Random):
    """A ``random.Random`` whose draws are always the low end of their range.

    The exploration chooses the timing itself (timers fire whenever it says),
    so a random draw would only make otherwise equal states differ.
    """

    def random(self) -> float:
        return 0.0

    def uniform(self, a: float, b: float) -> float:
        return a


@final
class _Layout:
    """How to copy and compare ``Election`` objects, read once from a fresh core.

    Copies share nothing mutable with the original except the counters
    (statistics that no rule reads).  The comparison key holds every field
    but the configuration, the counters, the rng (never drawn from here) and
    the output buffers, with times made relative to ``now`` (see ``key``).
    """

    def __init__(self, core: Election, horizon: float) -> None:
        fields = core.__dict__
        for name, value in fields.items():
            kind = type(value)
            if not (
                kind in (dict, list, set) or isinstance(value, _IMMUTABLE) or kind is CoreCounters or name == "_rng"
            ):
                # A new kind of field in Election: teach _Layout about it.
                raise TypeError(f"explore cannot copy Election.{name} of type {kind.__name__}")
        self.size = len(fields)
        self.horizon = horizon
        self.mutable = tuple(n for n, v in fields.items() if type(v) in (dict, list, set))
        self.roles = tuple(n for n in fields if n in _ROLE_STATES)
        keyed = [n for n in fields if n not in _SKIP_IN_KEY and n not in _ROLE_STATES]
        floats = [n for n in keyed if type(fields[n]) is float]
        self.dicts = tuple(n for n in keyed if type(fields[n]) is dict)
        self.plain = operator.itemgetter(*[n for n in keyed if n not in floats and n not in self.dicts])
        self.deadlines = operator.itemgetter(*[n for n in floats if n in _DEADLINES])
        self.past = operator.itemgetter(*[n for n in floats if n not in _DEADLINES])
        self.timed_dicts: dict[str, bool] = {}

    def clone(self, core: Election) -> Election:
        fields = core.__dict__
        if len(fields) != self.size:
            raise TypeError("Election gained a field after __init__: teach explore's _Layout about it")
        new = Election.__new__(Election)
        copy = new.__dict__
        copy.update(fields)
        for name in self.mutable:
            copy[name] = fields[name].copy()
        for name in self.roles:
            state = fields[name]
            if state is not None:
                copy[name] = state.copy()
        return new

    def key(self, core: Election, now: float) -> int:
        """A hash of *core*'s state with times relative to *now*.

        Deadlines in the past become 0; other past times (when something was
        sent, acknowledged, started) are clipped at ``T`` ago: the core
        compares them with ``now - T`` at most.
        """
        fields = core.__dict__
        floor = now - self.horizon
        parts: list[object] = [
            self.plain(fields),
            tuple([(t if t > now else now) - now for t in self.deadlines(fields)]),
            tuple([(t if t > floor else floor) - now for t in self.past(fields)]),
        ]
        timed = self.timed_dicts
        for name in self.dicts:
            value = fields[name]
            if not value:
                parts.append(())
                continue
            is_timed = timed.get(name)
            if is_timed is None:
                # Learnt from the first non-empty value: a dict holds times or it does not.
                is_timed = timed[name] = type(next(iter(value.values()))) is float
            if is_timed:
                parts.append(tuple([(k, (t if t > floor else floor) - now) for k, t in value.items()]))
            else:
                parts.append(tuple(value.items()))
        for name in self.roles:
            parts.append(_role_key(fields[name], now, floor))
        return hash(tuple(parts))


def _role_key(state: object, now: float, floor: float) -> object:
    """The key of one role's state (``Election._cand`` or ``_lead``), times relative to *now* as in ``key``."""
    if state is None:
        return None
    parts: list[object] = [type(state).__name__]
    for name in getattr(state, "__slots__", ()):
        value = getattr(state, name)
        if type(value) is float:
            limit = now if name in _DEADLINES else floor
            value = (value if value > limit else limit) - now
        elif type(value) is dict:
            value = tuple(
                [(k, (t if t > floor else floor) - now) if type(t) is float else (k, t) for k, t in value.items()]
            )
        parts.append(value)
    return tuple(parts)


# ------------------------------------------------------------------ states


@final
class _State:
    __slots__ = (
        "checker",
        "cores",
        "disconnects",
        "dups",
        "inflight",
        "keys",
        "nows",
        "restarts",
        "rounds",
        "transfers",
    )

    def __init__(
        self,
        nows: tuple[float, ...],
        cores: tuple[Election, ...],
        keys: tuple[int, ...],
        inflight: tuple[_Item, ...],
        dups: int,
        restarts: int,
        transfers: int,
        rounds: tuple[tuple[int, int], ...],
        checker: SafetyChecker,
        disconnects: int = 0,
    ) -> None:
        self.nows = nows
        self.cores = cores
        self.keys = keys
        self.inflight = inflight
        self.dups = dups
        self.restarts = restarts
        self.transfers = transfers
        self.disconnects = disconnects
        self.rounds = rounds
        self.checker = checker

    def but(self, **changes: object) -> _State:
        """A copy with some fields replaced."""
        new = _State.__new__(_State)
        for name in _State.__slots__:
            setattr(new, name, changes.get(name, getattr(self, name)))
        return new

    def without(self, inflight: tuple[_Item, ...]) -> _State:
        """The same state with *inflight* in flight (a message lost)."""
        return _State(
            self.nows,
            self.cores,
            self.keys,
            inflight,
            self.dups,
            self.restarts,
            self.transfers,
            self.rounds,
            self.checker,
            self.disconnects,
        )

    def key(self) -> int:
        return hash(
            (
                self.keys,
                self.inflight,
                self.dups,
                self.restarts,
                self.transfers,
                self.disconnects,
                self.rounds,
                self.checker.leaders_key(),
            )
        )


@final
class _Explorer:
    def __init__(
        self,
        ids: tuple[NodeId, ...],
        *,
        clocks: ClockModel,
        max_term: int,
        max_in_flight: int,
        max_duplicates: int,
        max_heartbeats: int,
        restarts: int,
        transfers: int,
        disconnects: int,
        successor_names: bool,
        timeout_quanta: int,
        pre_vote: bool,
        check_quorum: bool,
        split_vote_retry: bool,
        successor: bool,
        overload_backoff: bool,
        clock_drift: float,
    ) -> None:
        self.ids = ids
        self.shared = clocks == "shared"
        self.index = {node_id: i for i, node_id in enumerate(ids)}
        self.max_term = max_term
        self.max_in_flight = max_in_flight
        self.max_heartbeats = max_heartbeats
        timeout = float(timeout_quanta)
        self.configs = tuple(
            make_config(
                node_id,
                election_timeout=timeout,
                election_timeout_max=timeout,
                heartbeat_interval=timeout / 2,
                min_nodes=len(ids),
                max_nodes=len(ids),
                peer_ids=[i for i in ids if i != node_id],
                pre_vote=pre_vote,
                check_quorum=check_quorum,
                split_vote_retry=split_vote_retry,
                successor=successor,
                overload_backoff=overload_backoff,
                clock_drift=clock_drift,
                warn=False,
            )
            for node_id in ids
        )
        self.successor_names = successor_names
        self.rng = _LowDraws(0)
        self.layout = _Layout(self._new_core(0, None, 0.0), timeout)
        self.budgets = (max_duplicates, restarts, transfers, disconnects)
        self.truncated = 0
        self.order: dict[Message, str] = {}
        self.transcript: Transcript | None = None
        # While replaying a path: which choice of kept sends the step took.
        self.choice: int | None = None

    def _new_core(self, i: int, hard_state: HardState | None, now: float) -> Election:
        peers = [p for p in self.ids if p != self.ids[i]]
        return Election(self.configs[i], peers=peers, hard_state=hard_state, rng=self.rng, now=now)

    def initial(self) -> tuple[_State, Violation | None]:
        cores = tuple(self._new_core(i, None, 0.0) for i in range(len(self.ids)))
        checker = SafetyChecker()
        violation = None
        for i, core in enumerate(cores):
            violation = violation or self._observe(checker, i, core, 0.0, "start", None, ())
        dups, restarts, transfers, disconnects = self.budgets
        state = _State(
            nows=tuple(0.0 for _ in cores),
            cores=cores,
            keys=tuple(self.layout.key(c, 0.0) for c in cores),
            inflight=(),
            dups=dups,
            restarts=restarts,
            transfers=transfers,
            rounds=tuple((0, 0) for _ in cores),
            checker=checker,
            disconnects=disconnects,
        )
        return state, violation

    def _observe(
        self,
        checker: SafetyChecker,
        i: int,
        core: Election,
        now: float,
        kind: str,
        detail: object,
        events: tuple[LeaderChanged, ...],
    ) -> Violation | None:
        # With per-node clocks, leases are not comparable: the lease rule is
        # the shared-clock model's (and the simulator's) to check.
        lease = core.lease_expires_at if self.shared else -_NEVER
        if self.transcript is not None:
            snap = (core.role, core.term, core.voted_for, core.leader_id, core.holds_lease(now))
            self.transcript.record((now * _MS, kind, self.ids[i], detail, snap))
        return checker.observe(self.ids[i], core.role, core.term, core.voted_for, lease, now, events)

    def _sort_key(self, item: _Item) -> tuple[int, str, str]:
        text = self.order.get(item[2])
        if text is None:
            text = self.order[item[2]] = repr(item[2])
        return (item[0], str(item[1]), text)

    # ------------------------------------------------------------- stepping

    def successors(self, state: _State) -> Iterator[tuple[_Action, _State, Violation | None]]:
        """Every step possible from *state*: (action, next state, broken rule or None)."""
        seen: set[_Item] = set()
        inflight = state.inflight
        for n, item in enumerate(inflight):
            if item in seen:
                continue  # an identical copy leads to the same states
            seen.add(item)
            rest = inflight[:n] + inflight[n + 1 :]
            for j, (succ, broken) in enumerate(self._deliver(state, item, list(rest), state.dups)):
                yield ("deliver", item, j), succ, broken
            yield ("lose", item, 0), state.without(rest), None
            if state.dups > 0:
                for j, (succ, broken) in enumerate(self._deliver(state, item, list(inflight), state.dups - 1)):
                    yield ("duplicate", item, j), succ, broken
            if self.successor_names and type(item[2]) is Heartbeat:
                for j, (succ, broken) in enumerate(self._deliver(state, self._renamed(item), list(rest), state.dups)):
                    yield ("renamed", item, j), succ, broken
        for i, core in enumerate(state.cores):
            deadline = core.next_deadline
            if deadline == _NEVER or (self.shared and deadline > state.nows[i]):
                continue
            if core.role is Role.LEADER and state.rounds[i] == (core.term, self.max_heartbeats):
                continue
            for j, (succ, broken) in enumerate(self._tick(state, i)):
                yield ("tick", i, j), succ, broken
        if self.shared:
            yield ("advance", None, 0), self._advance(state), None
        if state.restarts > 0:
            for i in range(len(state.cores)):
                for j, (succ, broken) in enumerate(self._restart(state, i)):
                    yield ("restart", i, j), succ, broken
        if state.transfers > 0:
            for i, core in enumerate(state.cores):
                if core.role is Role.LEADER:
                    for j, (succ, broken) in enumerate(self._transfer(state, i)):
                        yield ("transfer", i, j), succ, broken
        if state.disconnects > 0:
            for i, core in enumerate(state.cores):
                for p in range(len(state.cores)):
                    if p != i and _notice_matters(core, self.ids[p]):
                        for j, (succ, broken) in enumerate(self._disconnect(state, i, p)):
                            yield ("disconnect", (i, p), j), succ, broken

    def apply(self, state: _State, action: _Action) -> tuple[_State, Violation | None]:
        """Take one step again (to rebuild the trace of a violation)."""
        kind, arg, choice = action
        self.choice = choice
        if kind in ("deliver", "duplicate", "lose", "renamed"):
            item: _Item = arg  # type: ignore[assignment]
            rest = list(state.inflight)
            if kind != "duplicate":
                rest.remove(item)
            if kind == "renamed":
                (result,) = self._deliver(state, self._renamed(item), rest, state.dups)
                return result
            if kind == "lose":
                if self.transcript is not None:
                    detail = (item[1], item[2], "lost")
                    self.transcript.record((state.nows[item[0]] * _MS, "drop", self.ids[item[0]], detail, None))
                return state.without(tuple(rest)), None
            (result,) = self._deliver(state, item, rest, state.dups - (kind == "duplicate"))
            return result
        if kind == "advance":
            return self._advance(state), None
        if kind == "disconnect":
            pair: tuple[int, int] = arg  # type: ignore[assignment]
            (result,) = self._disconnect(state, *pair)
            return result
        index: int = arg  # type: ignore[assignment]
        if kind == "tick":
            (result,) = self._tick(state, index)
        elif kind == "restart":
            (result,) = self._restart(state, index)
        else:
            (result,) = self._transfer(state, index)
        return result

    def _deliver(
        self, state: _State, item: _Item, rest: list[_Item], dups: int
    ) -> list[tuple[_State, Violation | None]]:
        i, sender, message = item
        core = self.layout.clone(state.cores[i])
        now = state.nows[i]
        out = core.step(message, now)
        return self._after(state, i, now, core, out, rest, "deliver", (sender, message), dups=dups)

    def _tick(self, state: _State, i: int) -> list[tuple[_State, Violation | None]]:
        core = self.layout.clone(state.cores[i])
        # Per-node clocks jump to the deadline; a shared clock is already past it.
        now = max(state.nows[i], core.next_deadline)
        timed = core.role is Role.LEADER
        out = core.tick(now)
        return self._after(state, i, now, core, out, list(state.inflight), "tick", None, timed=timed)

    def _restart(self, state: _State, i: int) -> list[tuple[_State, Violation | None]]:
        old = state.cores[i]
        now = state.nows[i]
        core = self._new_core(i, HardState(old.term, old.voted_for), now)
        out = Output(persist=None, sends=(), events=(), next_deadline=core.next_deadline)
        state = state.but(restarts=state.restarts - 1)
        return self._after(state, i, now, core, out, list(state.inflight), "restart", None, crashed=True)

    def _transfer(self, state: _State, i: int) -> list[tuple[_State, Violation | None]]:
        core = self.layout.clone(state.cores[i])
        now = state.nows[i]
        out = core.transfer_leadership(None, now)
        state = state.but(transfers=state.transfers - 1)
        return self._after(state, i, now, core, out, list(state.inflight), "transfer", None)

    def _disconnect(self, state: _State, i: int, p: int) -> list[tuple[_State, Violation | None]]:
        core = self.layout.clone(state.cores[i])
        now = state.nows[i]
        out = core.peer_disconnected(self.ids[p], now)
        state = state.but(disconnects=state.disconnects - 1)
        kind = f"PeerDisconnected({self.ids[p]!r})"
        return self._after(state, i, now, core, out, list(state.inflight), kind, None)

    def _renamed(self, item: _Item) -> _Item:
        """*item*, a heartbeat, naming its receiver as the successor if it named another, else naming none."""
        i, sender, message = item
        assert type(message) is Heartbeat
        receiver = self.ids[i]
        successor = None if message.successor == receiver else receiver
        return (i, sender, Heartbeat(message.term, message.leader_id, message.seq, successor))

    def _advance(self, state: _State) -> _State:
        nows = tuple(now + 1.0 for now in state.nows)
        if self.transcript is not None:
            self.transcript.record((nows[0] * _MS, "fault", None, "one time quantum passes", None))
        return state.but(nows=nows, keys=tuple(self.layout.key(c, nows[0]) for c in state.cores))

    def _after(
        self,
        state: _State,
        i: int,
        now: float,
        core: Election,
        out: Output,
        inflight: list[_Item],
        kind: str,
        detail: object,
        *,
        dups: int | None = None,
        timed: bool = False,
        crashed: bool = False,
    ) -> list[tuple[_State, Violation | None]]:
        """The states after a step of node *i*: one per choice of the sends that fit in flight."""
        sender = self.ids[i]
        # The driver's executor carries the output out; saves are instant
        # here, so storage always holds the core's term and vote (which is
        # what a restart comes back with).
        index = self.index
        sends: list[_Item] = []
        events: list[LeaderChanged] = []
        executor = Executor(lambda to, message: sends.append((index[to], sender, message)), events.append)
        executor.submit(out)
        while executor.pending_save is not None:
            executor.saved()
        room = max(self.max_in_flight - len(inflight), 0)
        if len(sends) <= room:
            choices: list[tuple[_Item, ...]] = [tuple(sends)]
        else:
            # The network may lose any of them: every way to fill the room
            # (smaller choices are reached by losing a message later).
            choices = list(itertools.combinations(sends, room))
            self.truncated += len(sends) - room
            if self.choice is not None:
                choices = [choices[self.choice]]
                if self.transcript is not None:
                    for item in sends:
                        if item not in choices[0]:
                            to = self.ids[item[0]]
                            self.transcript.record((now * _MS, "drop", to, (sender, item[2], "lost"), None))
        checker = state.checker
        lease = core.lease_expires_at if self.shared else -_NEVER
        if crashed or checker.changes(sender, core.role, core.term, core.voted_for, lease):
            # Copy on write: most steps leave the checker's memory as it was.
            checker = checker.copy()
            if crashed:
                checker.crashed(sender)
        violation = self._observe(checker, i, core, now, kind, detail, tuple(events))
        # A leader's timed heartbeat rounds in its current term (bounded).
        rounds = state.rounds
        if core.role is not Role.LEADER:
            value = (0, 0)
        else:
            term, count = rounds[i]
            if term != core.term:
                term, count = core.term, 0
            value = (term, count + 1 if timed else count)
        if value != rounds[i]:
            rounds = (*rounds[:i], value, *rounds[i + 1 :])
        nows = (*state.nows[:i], now, *state.nows[i + 1 :]) if not self.shared else state.nows
        cores = (*state.cores[:i], core, *state.cores[i + 1 :])
        keys = (*state.keys[:i], self.layout.key(core, now), *state.keys[i + 1 :])
        dups = state.dups if dups is None else dups
        results = []
        for kept in choices:
            flight = inflight + list(kept) if kept else inflight
            if len(flight) > 1:
                flight.sort(key=self._sort_key)
            new = _State(
                nows,
                cores,
                keys,
                tuple(flight),
                dups,
                state.restarts,
                state.transfers,
                rounds,
                checker,
                state.disconnects,
            )
            results.append((new, violation))
        return results


def _notice_matters(core: Election, peer: NodeId) -> bool:
    """Whether ``PeerDisconnected(peer)`` can change *core* (``Election.peer_disconnected``).

    Only a leader (it stops naming the peer, or retries a transfer to it)
    and the designated successor of that peer (it stands) act on a notice.
    Any other notice leaves the core as it was and only spends the budget:
    every state reachable after it is reachable without it, so it is not
    explored.
    """
    if core.role is Role.LEADER:
        return True
    return (
        core.role is Role.FOLLOWER
        and core.config.successor
        and core.leader_id == peer
        and core.named_successor == core.self_id
    )


def explore(
    nodes: int = 3,
    *,
    clocks: ClockModel = "per-node",
    max_term: int = 3,
    max_in_flight: int = 3,
    max_duplicates: int = 1,
    max_heartbeats: int = 2,
    max_depth: int | None = None,
    restarts: int = 0,
    transfers: int = 0,
    disconnects: int = 0,
    successor_names: bool = False,
    timeout_quanta: int = 2,
    pre_vote: bool = True,
    check_quorum: bool = True,
    split_vote_retry: bool = True,
    successor: bool = True,
    overload_backoff: bool = True,
    clock_drift: float = 0.01,
    max_states: int | None = None,
) -> ExplorationResult:
    """Visit every reachable state of a small cluster within the bounds; check the safety rules in each.

    Args:
        nodes: the cluster size (ids ``"a"``, ``"b"``, ...).
        clocks: ``"per-node"`` (asynchronous, four rules) or ``"shared"``
            (one quantized clock, all five rules, the lease included).
        max_term: states where a term exceeds this are checked, not expanded.
        max_in_flight: at most this many messages in flight; extra sends are lost.
        max_duplicates: how many duplicate deliveries a path may contain.
        max_heartbeats: timed heartbeat rounds a leader may send per term.
        max_depth: explore paths of at most this many steps (``None``: no limit).
        restarts: how many restarts from storage a path may contain.
        transfers: how many leadership transfers a path may contain.
        disconnects: how many ``PeerDisconnected`` notices a path may contain
            (any node, about any peer, at any point: true or spurious).
        successor_names: heartbeats may arrive naming another successor
            (the receiver, or none when it was named): peers that disagree
            about who was named.
        timeout_quanta: ``T`` in time quanta (even, >= 2); the heartbeat
            interval is ``T / 2``.  More quanta: finer timing, more states.
        pre_vote, check_quorum, split_vote_retry, successor, overload_backoff:
            the core's switches.
        clock_drift: the configured drift bound (sets the lease length).
        max_states: stop after this many distinct states (``None``: no limit).

    Returns:
        The counts, and the first violation with a shortest path to it.
    """
    if clocks not in ("per-node", "shared"):
        raise ValueError(f"clocks must be 'per-node' or 'shared', got {clocks!r}")
    if timeout_quanta < 2 or timeout_quanta % 2:
        raise ValueError(f"timeout_quanta must be even and >= 2, got {timeout_quanta}")
    options: dict[str, object] = {
        "clocks": clocks,
        "max_term": max_term,
        "max_in_flight": max_in_flight,
        "max_duplicates": max_duplicates,
        "max_heartbeats": max_heartbeats,
        "restarts": restarts,
        "transfers": transfers,
        "disconnects": disconnects,
        "successor_names": successor_names,
        "timeout_quanta": timeout_quanta,
        "pre_vote": pre_vote,
        "check_quorum": check_quorum,
        "split_vote_retry": split_vote_retry,
        "successor": successor,
        "overload_backoff": overload_backoff,
        "clock_drift": clock_drift,
    }
    ids: tuple[NodeId, ...] = tuple(chr(ord("a") + i) for i in range(nodes))
    # The search allocates millions of small containers and frees few until
    # the end: the cyclic garbage collector would walk them all, again and
    # again, for nothing (the search makes no reference cycles).
    collecting = gc.isenabled()
    gc.disable()
    try:
        with core_logging(False):
            return _explore(ids, options, max_states, max_depth)
    finally:
        if collecting:
            gc.enable()


def _explore(
    ids: tuple[NodeId, ...], options: dict[str, object], max_states: int | None, max_depth: int | None
) -> ExplorationResult:
    explorer = _Explorer(ids, **options)  # type: ignore[arg-type]
    started = time.perf_counter()
    initial, violation = explorer.initial()
    visited = {initial.key()}
    # Each frontier entry: (state, depth, path), the path as nested (parent, action) pairs.
    frontier: deque[tuple[_State, int, object]] = deque([(initial, 0, None)])
    transitions = unexpanded = depth = max_term_reached = 0
    leaders: set[tuple[int, NodeId]] = set()
    complete = True
    found: tuple[Violation, object] | None = None
    while frontier and found is None and violation is None:
        state, level, path = frontier.popleft()
        depth = max(depth, level)
        top = max(core.term for core in state.cores)
        max_term_reached = max(max_term_reached, top)
        for core in state.cores:
            if core.role is Role.LEADER:
                leaders.add((core.term, core.self_id))
        if top > explorer.max_term or (max_depth is not None and level >= max_depth):
            unexpanded += 1
            continue
        for action, succ, broken in explorer.successors(state):
            transitions += 1
            if broken is not None:
                found = (broken, (path, action))
                break
            key = succ.key()
            if key in visited:
                continue
            visited.add(key)
            frontier.append((succ, level + 1, (path, action)))
            if max_states is not None and len(visited) >= max_states:
                complete = False
                frontier.clear()
                break
    trace: tuple[str, ...] = ()
    if found is not None:
        violation = found[0]
        trace = _replay(ids, options, found[1], violation)
    return ExplorationResult(
        states=len(visited),
        transitions=transitions,
        depth=depth,
        unexpanded=unexpanded,
        truncated=explorer.truncated,
        max_term_reached=max_term_reached,
        leaders_elected=len(leaders),
        elapsed=time.perf_counter() - started,
        complete=complete,
        bounds={**{k: v for k, v in options.items() if k != "clock_drift"}, "max_depth": max_depth},
        violation=violation,
        trace=trace,
    )


def _replay(ids: tuple[NodeId, ...], options: dict[str, object], path: object, violation: Violation) -> tuple[str, ...]:
    actions: list[_Action] = []
    node: Any = path
    while node is not None:
        node, step = node
        actions.append(step)
    actions.reverse()
    explorer = _Explorer(ids, **options)  # type: ignore[arg-type]
    explorer.transcript = Transcript(None)
    state, _ = explorer.initial()
    for action in actions:
        state, _ = explorer.apply(state, action)
    lines = explorer.transcript.relevant(violation.nodes, violation.term, last=60)
    unit = "one time quantum is shown as 1 ms" + ("" if explorer.shared else "; each node's own clock")
    return (f"a shortest path of {len(actions)} steps ({unit})", *lines)


def _explore_kwargs(options: dict[str, Any]) -> ExplorationResult:
    return explore(**options)


def explore_many(configs: list[dict[str, Any]], *, processes: int | None = None) -> list[ExplorationResult]:
    """Run ``explore(**config)`` for each config, in parallel worker processes.

    Args:
        configs: keyword arguments for ``explore``, one dict per run.
        processes: how many workers (default: one per CPU, at most one per run).

    Returns:
        The results, in the order of *configs*.
    """
    workers = min(len(configs), processes or os.cpu_count() or 1)
    if workers <= 1:
        return [explore(**c) for c in configs]
    # "spawn": a fresh interpreter per worker, safe whatever threads the caller runs.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_explore_kwargs, configs))
