"""Bounded exhaustive exploration of a small cluster of real election cores.

``explore`` visits, breadth first, every state a cluster (three nodes by
default) can reach through any interleaving of these steps:

* deliver any message in flight (messages may be delivered in any order);
* lose any message in flight;
* deliver a copy of a message and keep it in flight (a duplicate, within a
  budget);
* fire the timer of any node whose deadline has passed (timers may fire
  late, never early);
* let one quantum of time pass: all nodes share one clock, which advances
  in quanta (``T`` is ``timeout_quanta`` of them, 2 by default, and the
  heartbeat interval ``T / 2``), so every delay is a whole number of quanta;
* restart a node from its storage, and ask a leader to hand over (each
  within a budget, off by default).

It checks the ``SafetyChecker`` rules after every step.  The state space is
made finite by bounds: states in which some node's term exceeds
``max_term`` are checked but not expanded; a step that would leave more
than ``max_in_flight`` messages in flight loses the extra ones (losing
messages is allowed anyway); a leader sends at most ``max_heartbeats``
timed heartbeat rounds per term.

States are compared with their times taken relative to the current time:
deadlines in the past count as "now", and other past times are clipped at
``T`` ago.  The cores only compare times with ``now`` plus offsets of at
most ``T``, so two states that differ only in those ways behave alike.
Each state is stored as a 64-bit hash of that canonical form (a collision,
about one chance in 10^8 for a million states, could only hide states).

Timeouts are not randomized here (``election_timeout_max == T``): the
exploration chooses the timing itself, which covers every random draw that
lands on the quantum grid.  Clock drift and random timing are the
simulator's job.
"""

from __future__ import annotations

import gc
import operator
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import final

from .._core import Config, CoreCounters, Election, Output
from .._messages import LeaderChanged, Message, NodeId, Role
from .._protocols import HardState
from ._safety import SafetyChecker, SafetyViolation, Transcript, Violation
from ._sim import core_logging

_UNIT = 1.0
_MS = 1e-3  # transcripts show one time quantum as one millisecond

# A message in flight: (destination index, sender id, message).
_Item = tuple[int, NodeId, Message]
# An action: what the explorer did, enough to replay it.
_Action = tuple[str, object]


@final
@dataclass(frozen=True, slots=True)
class ExplorationResult:
    """What ``explore`` found.

    Attributes:
        states: distinct states reached (the initial one included).
        transitions: steps executed (each leads to a new or an already seen state).
        depth: the most steps on a shortest path to any state reached.
        unexpanded: states checked but not expanded because a term passed ``max_term``.
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

_SKIP_IN_KEY = frozenset({"config", "counters", "_rng", "_sends", "_events", "_persisted", "_self_id"})
_IMMUTABLE = (int, float, str, bool, type(None), tuple, frozenset, Role, Config, HardState)
# Times the core only ever compares as ``now >= t`` or ``now < t``: once in
# the past, how long ago no longer matters.
_DEADLINES = frozenset(
    {"_election_deadline", "_sticky_until", "_heartbeat_deadline", "_transfer_deadline", "_lease_expires_at"}
)


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
            if not (kind in (dict, list, set) or isinstance(value, _IMMUTABLE) or kind is CoreCounters or name == "_rng"):
                # A new kind of field in Election: teach _Layout about it.
                raise TypeError(f"explore cannot copy Election.{name} of type {kind.__name__}")
        self.size = len(fields)
        self.horizon = horizon
        self.mutable = tuple(n for n, v in fields.items() if type(v) in (dict, list, set))
        keyed = [n for n in fields if n not in _SKIP_IN_KEY]
        floats = [n for n in keyed if type(fields[n]) is float]
        self.dicts = tuple(n for n in keyed if type(fields[n]) is dict)
        self.plain = operator.itemgetter(*[n for n in keyed if n not in floats and n not in self.dicts])
        self.deadlines = operator.itemgetter(*[n for n in floats if n in _DEADLINES])
        self.past = operator.itemgetter(*[n for n in floats if n not in _DEADLINES])

    def clone(self, core: Election) -> Election:
        fields = core.__dict__
        if len(fields) != self.size:
            raise TypeError("Election gained a field after __init__: teach explore's _Layout about it")
        new = Election.__new__(Election)
        copy = new.__dict__
        copy.update(fields)
        for name in self.mutable:
            copy[name] = fields[name].copy()
        return new

    def key(self, core: Election, now: float) -> tuple[object, ...]:
        """*core*'s state with times relative to *now*.

        Deadlines in the past become 0; other past times (when something was
        sent, acknowledged, started) are clipped at ``T`` ago: the core
        compares them with ``now - T`` at most.
        """
        fields = core.__dict__
        low = -self.horizon
        parts: list[object] = [
            self.plain(fields),
            tuple(0.0 if t < now else t - now for t in self.deadlines(fields)),
            tuple(low if t - now < low else t - now for t in self.past(fields)),
        ]
        for name in self.dicts:
            value = fields[name]
            if value and type(next(iter(value.values()))) is float:
                parts.append(tuple((k, low if t - now < low else t - now) for k, t in value.items()))
            else:
                parts.append(tuple(value.items()))
        return tuple(parts)


# ------------------------------------------------------------------ states


@final
class _State:
    __slots__ = ("checker", "cores", "dups", "inflight", "keys", "now", "restarts", "rounds", "transfers")

    def __init__(
        self,
        now: float,
        cores: tuple[Election, ...],
        keys: tuple[tuple[object, ...], ...],
        inflight: tuple[_Item, ...],
        dups: int,
        restarts: int,
        transfers: int,
        rounds: tuple[tuple[int, int], ...],
        checker: SafetyChecker,
    ) -> None:
        self.now = now
        self.cores = cores
        self.keys = keys
        self.inflight = inflight
        self.dups = dups
        self.restarts = restarts
        self.transfers = transfers
        self.rounds = rounds
        self.checker = checker

    def key(self) -> int:
        return hash(
            (
                self.keys,
                self.inflight,
                self.dups,
                self.restarts,
                self.transfers,
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
        max_term: int,
        max_in_flight: int,
        max_duplicates: int,
        max_heartbeats: int,
        restarts: int,
        transfers: int,
        timeout_quanta: int,
        pre_vote: bool,
        check_quorum: bool,
        split_vote_retry: bool,
        clock_drift: float,
    ) -> None:
        self.ids = ids
        self.index = {node_id: i for i, node_id in enumerate(ids)}
        self.max_term = max_term
        self.max_in_flight = max_in_flight
        self.max_heartbeats = max_heartbeats
        timeout = float(timeout_quanta)
        self.configs = tuple(
            Config(
                self_id=node_id,
                election_timeout=timeout,
                election_timeout_max=timeout,
                heartbeat_interval=timeout / 2,
                min_nodes=len(ids),
                max_nodes=len(ids),
                pre_vote=pre_vote,
                check_quorum=check_quorum,
                lease_duration=timeout * (1 - clock_drift) / (1 + clock_drift),
                split_vote_retry=split_vote_retry,
            )
            for node_id in ids
        )
        self.layout = _Layout(self._new_core(0, None, 0.0), timeout)
        self.initial_budgets = (max_duplicates, restarts, transfers)
        self.truncated = 0
        self.order: dict[Message, str] = {}
        self.transcript: Transcript | None = None

    # -------------------------------------------------------------- building

    def _new_core(self, i: int, hard_state: HardState | None, now: float) -> Election:
        import random  # the rng is never drawn from: timeouts are not randomized here

        peers = [p for p in self.ids if p != self.ids[i]]
        return Election(self.configs[i], peers=peers, hard_state=hard_state, rng=random.Random(0), now=now)

    def initial(self) -> tuple[_State, Violation | None]:
        cores = tuple(self._new_core(i, None, 0.0) for i in range(len(self.ids)))
        checker = SafetyChecker()
        violation = None
        for i, core in enumerate(cores):
            violation = violation or self._observe(checker, i, core, 0.0, "start", None, ())
        dups, restarts, transfers = self.initial_budgets
        keys = tuple(self.layout.key(c, 0.0) for c in cores)
        rounds = tuple((0, 0) for _ in cores)
        return _State(0.0, cores, keys, (), dups, restarts, transfers, rounds, checker), violation

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
        lease = core.lease_expires_at
        if self.transcript is not None:
            snap = (core.role, core.term, core.voted_for, core.leader_id, lease > now)
            self.transcript.record((now * _MS, kind, self.ids[i], detail, snap))
        return checker.observe(self.ids[i], core.role, core.term, core.voted_for, lease, now, events)

    def _sort_key(self, item: _Item) -> tuple[int, str, str]:
        text = self.order.get(item[2])
        if text is None:
            text = self.order[item[2]] = repr(item[2])
        return (item[0], str(item[1]), text)

    def _after_step(
        self,
        state: _State,
        i: int,
        core: Election,
        out: Output,
        inflight: list[_Item],
        kind: str,
        detail: object,
        *,
        dups: int,
        restarts: int,
        transfers: int,
        rounds: tuple[tuple[int, int], ...],
        crashed: bool = False,
    ) -> tuple[_State, Violation | None]:
        now = state.now
        room = self.max_in_flight - len(inflight)
        sender = self.ids[i]
        for to, message in out.sends:
            if room <= 0:
                self.truncated += 1
                if self.transcript is not None:
                    self.transcript.record((now * _MS, "drop", to, (sender, message, "in-flight bound"), None))
                continue
            inflight.append((self.index[to], sender, message))
            room -= 1
        inflight.sort(key=self._sort_key)
        checker = state.checker.copy()
        if crashed:
            checker.crashed(sender)
        violation = self._observe(checker, i, core, now, kind, detail, out.events)
        cores = state.cores[:i] + (core,) + state.cores[i + 1 :]
        keys = state.keys[:i] + (self.layout.key(core, now),) + state.keys[i + 1 :]
        new = _State(now, cores, keys, tuple(inflight), dups, restarts, transfers, rounds, checker)
        return new, violation

    # ------------------------------------------------------------- stepping

    def successors(self, state: _State) -> Iterator[tuple[_Action, _State, Violation | None]]:
        seen: set[_Item] = set()
        inflight = state.inflight
        for n, item in enumerate(inflight):
            if item in seen:
                continue
            seen.add(item)
            rest = inflight[:n] + inflight[n + 1 :]
            yield (("deliver", item), *self._deliver(state, item, list(rest), state.dups))
            lost = _State(
                state.now,
                state.cores,
                state.keys,
                rest,
                state.dups,
                state.restarts,
                state.transfers,
                state.rounds,
                state.checker,
            )
            yield ("lose", item), lost, None
            if state.dups > 0:
                yield (("duplicate", item), *self._deliver(state, item, list(inflight), state.dups - 1))
        for i, core in enumerate(state.cores):
            if core.next_deadline <= state.now:
                if core.role is Role.LEADER and state.rounds[i] == (core.term, self.max_heartbeats):
                    continue
                yield (("tick", i), *self._tick(state, i))
        yield ("advance", None), self._advance(state), None
        if state.restarts > 0:
            for i in range(len(state.cores)):
                yield (("restart", i), *self._restart(state, i))
        if state.transfers > 0:
            for i, core in enumerate(state.cores):
                if core.role is Role.LEADER:
                    yield (("transfer", i), *self._transfer(state, i))

    def apply(self, state: _State, action: _Action) -> tuple[_State, Violation | None]:
        """Replay one action (used to rebuild the trace of a violation)."""
        kind, arg = action
        if kind == "deliver" or kind == "duplicate":
            item: _Item = arg  # type: ignore[assignment]
            rest = list(state.inflight)
            if kind == "deliver":
                rest.remove(item)
            return self._deliver(state, item, rest, state.dups - (kind == "duplicate"))
        if kind == "lose":
            rest = list(state.inflight)
            rest.remove(arg)  # type: ignore[arg-type]
            lost_item: _Item = arg  # type: ignore[assignment]
            if self.transcript is not None:
                self.transcript.record(
                    (state.now * _MS, "drop", self.ids[lost_item[0]], (lost_item[1], lost_item[2], "lost"), None)
                )
            return (
                _State(
                    state.now,
                    state.cores,
                    state.keys,
                    tuple(rest),
                    state.dups,
                    state.restarts,
                    state.transfers,
                    state.rounds,
                    state.checker,
                ),
                None,
            )
        if kind == "tick":
            return self._tick(state, arg)  # type: ignore[arg-type]
        if kind == "advance":
            return self._advance(state), None
        if kind == "restart":
            return self._restart(state, arg)  # type: ignore[arg-type]
        return self._transfer(state, arg)  # type: ignore[arg-type]

    def _deliver(self, state: _State, item: _Item, rest: list[_Item], dups: int) -> tuple[_State, Violation | None]:
        i, sender, message = item
        core = self.layout.clone(state.cores[i])
        out = core.step(message, state.now)
        return self._after_step(
            state,
            i,
            core,
            out,
            rest,
            "deliver",
            (sender, message),
            dups=dups,
            restarts=state.restarts,
            transfers=state.transfers,
            rounds=self._rounds(state, i, core, timed=False),
        )

    def _tick(self, state: _State, i: int) -> tuple[_State, Violation | None]:
        core = self.layout.clone(state.cores[i])
        was_leader = core.role is Role.LEADER
        out = core.tick(state.now)
        return self._after_step(
            state,
            i,
            core,
            out,
            list(state.inflight),
            "tick",
            None,
            dups=state.dups,
            restarts=state.restarts,
            transfers=state.transfers,
            rounds=self._rounds(state, i, core, timed=was_leader),
        )

    def _restart(self, state: _State, i: int) -> tuple[_State, Violation | None]:
        old = state.cores[i]
        core = self._new_core(i, HardState(old.term, old.voted_for), state.now)
        out = Output(persist=None, sends=(), events=(), next_deadline=core.next_deadline)
        return self._after_step(
            state,
            i,
            core,
            out,
            list(state.inflight),
            "restart",
            None,
            dups=state.dups,
            restarts=state.restarts - 1,
            transfers=state.transfers,
            rounds=self._rounds(state, i, core, timed=False),
            crashed=True,
        )

    def _transfer(self, state: _State, i: int) -> tuple[_State, Violation | None]:
        core = self.layout.clone(state.cores[i])
        out = core.transfer_leadership(None, state.now)
        return self._after_step(
            state,
            i,
            core,
            out,
            list(state.inflight),
            "transfer",
            None,
            dups=state.dups,
            restarts=state.restarts,
            transfers=state.transfers - 1,
            rounds=self._rounds(state, i, core, timed=False),
        )

    def _advance(self, state: _State) -> _State:
        now = state.now + _UNIT
        if self.transcript is not None:
            self.transcript.record((now * _MS, "fault", None, "time passes", None))
        keys = tuple(self.layout.key(c, now) for c in state.cores)
        return _State(
            now,
            state.cores,
            keys,
            state.inflight,
            state.dups,
            state.restarts,
            state.transfers,
            state.rounds,
            state.checker,
        )

    @staticmethod
    def _rounds(state: _State, i: int, core: Election, *, timed: bool) -> tuple[tuple[int, int], ...]:
        if core.role is not Role.LEADER:
            value = (0, 0)
        else:
            term, count = state.rounds[i]
            if term != core.term:
                term, count = core.term, 0
            value = (term, count + 1 if timed else count)
        if value == state.rounds[i]:
            return state.rounds
        return state.rounds[:i] + (value,) + state.rounds[i + 1 :]


def explore(
    nodes: int = 3,
    *,
    max_term: int = 3,
    max_in_flight: int = 3,
    max_duplicates: int = 1,
    max_heartbeats: int = 2,
    restarts: int = 0,
    transfers: int = 0,
    timeout_quanta: int = 2,
    pre_vote: bool = True,
    check_quorum: bool = True,
    split_vote_retry: bool = True,
    clock_drift: float = 0.01,
    max_states: int | None = None,
) -> ExplorationResult:
    """Visit every reachable state of a small cluster within the bounds; check the safety rules in each.

    Args:
        nodes: the cluster size (ids ``"a"``, ``"b"``, ...).
        max_term: states where a term exceeds this are checked, not expanded.
        max_in_flight: at most this many messages in flight; extra sends are lost.
        max_duplicates: how many duplicate deliveries a path may contain.
        max_heartbeats: timed heartbeat rounds a leader may send per term.
        restarts: how many restarts from storage a path may contain.
        transfers: how many leadership transfers a path may contain.
        timeout_quanta: ``T`` in time quanta (even, >= 2); the heartbeat
            interval is ``T / 2``.  More quanta: finer timing, more states.
        pre_vote, check_quorum, split_vote_retry: the core's switches.
        clock_drift: the configured drift bound (sets the lease length).
        max_states: stop after this many distinct states (``None``: no limit).

    Returns:
        The counts, and the first violation with a shortest path to it.
    """
    bounds: dict[str, object] = {
        "nodes": nodes,
        "max_term": max_term,
        "max_in_flight": max_in_flight,
        "max_duplicates": max_duplicates,
        "max_heartbeats": max_heartbeats,
        "restarts": restarts,
        "transfers": transfers,
        "timeout_quanta": timeout_quanta,
        "pre_vote": pre_vote,
        "check_quorum": check_quorum,
        "split_vote_retry": split_vote_retry,
    }
    if timeout_quanta < 2 or timeout_quanta % 2:
        raise ValueError(f"timeout_quanta must be even and >= 2, got {timeout_quanta}")
    ids: tuple[NodeId, ...] = tuple(chr(ord("a") + i) for i in range(nodes))
    options = {
        "max_term": max_term,
        "max_in_flight": max_in_flight,
        "max_duplicates": max_duplicates,
        "max_heartbeats": max_heartbeats,
        "restarts": restarts,
        "transfers": transfers,
        "timeout_quanta": timeout_quanta,
        "pre_vote": pre_vote,
        "check_quorum": check_quorum,
        "split_vote_retry": split_vote_retry,
        "clock_drift": clock_drift,
    }
    # The search allocates millions of small containers and frees none
    # until the end: the cyclic garbage collector would walk them all, again
    # and again, for nothing (nothing here forms cycles that outlive a call).
    collecting = gc.isenabled()
    gc.disable()
    try:
        with core_logging(False):
            return _explore(ids, options, bounds, max_states)
    finally:
        if collecting:
            gc.enable()


def _explore(
    ids: tuple[NodeId, ...], options: dict[str, object], bounds: dict[str, object], max_states: int | None
) -> ExplorationResult:
    explorer = _Explorer(ids, **options)  # type: ignore[arg-type]
    started = time.perf_counter()
    initial, violation = explorer.initial()
    visited = {initial.key()}
    # Each frontier entry: (state, depth, path), the path as nested (parent, action) pairs.
    frontier: deque[tuple[_State, int, object]] = deque([(initial, 0, None)])
    transitions = unexpanded = depth = 0
    max_term_reached = 0
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
        if top > explorer.max_term:
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
        bounds=bounds,
        violation=violation,
        trace=trace,
    )


def _replay(ids: tuple[NodeId, ...], options: dict[str, object], path: object, violation: Violation) -> tuple[str, ...]:
    actions: list[_Action] = []
    while path is not None:
        path, action = path  # type: ignore[misc]
        actions.append(action)
    actions.reverse()
    explorer = _Explorer(ids, **options)  # type: ignore[arg-type]
    explorer.transcript = Transcript(None)
    state, _ = explorer.initial()
    for action in actions:
        state, _ = explorer.apply(state, action)
    lines = explorer.transcript.relevant(violation.nodes, violation.term, last=60)
    return (f"a shortest path of {len(actions)} steps (one time quantum is shown as 1 ms)", *lines)
