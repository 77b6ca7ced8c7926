"""The safety checker and the transcript it prints when a rule breaks.

``SafetyChecker`` keeps, across the whole run and across restarts, what the
rules need: each node's latest term, every vote cast (by node and term), the
leader of every term, and until when each node holds its lease (in true time,
not the node's possibly drifting clock).  The simulator and the explorer call
``observe`` after every step of every node; the first broken rule comes back
as a ``Violation``.  The rules are those of docs/specification.md
("Safety properties"):

* at most one leader per term;
* at most one node holding a valid lease at any instant;
* terms never decrease on a node (across restarts from storage too);
* a node never votes for two candidates in one term (across restarts too:
  the checker remembers votes, the node only what its storage kept);
* views are truthful: a ``LeaderChanged`` never names a node that did not
  win that term.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import final

from .._messages import (
    Heartbeat,
    HeartbeatResponse,
    LeaderChanged,
    Message,
    NodeId,
    RequestVote,
    Role,
    TimeoutNow,
    VoteResponse,
)

ONE_LEADER_PER_TERM = "one leader per term"
ONE_LEASE_AT_A_TIME = "one lease at a time"
TERMS_NEVER_DECREASE = "terms never decrease"
ONE_VOTE_PER_TERM = "one vote per term"
TRUTHFUL_VIEWS = "views are truthful"

RULES = (ONE_LEADER_PER_TERM, ONE_LEASE_AT_A_TIME, TERMS_NEVER_DECREASE, ONE_VOTE_PER_TERM, TRUTHFUL_VIEWS)
"""The names of the rules the checker enforces."""


@final
@dataclass(frozen=True, slots=True)
class Violation:
    """A broken safety rule.

    Attributes:
        rule: one of ``RULES``.
        message: what happened, in words.
        time: when (true virtual time, seconds).
        nodes: the nodes involved.
        term: the term involved, if any.
    """

    rule: str
    message: str
    time: float
    nodes: tuple[NodeId, ...]
    term: int | None = None


class SafetyViolation(AssertionError):
    """Raised when a simulation or an exploration breaks a safety rule.

    Its text holds the seed (or the path), the rule and the last steps that
    led there, shortened to the nodes and term involved.

    Attributes:
        violation: the broken rule.
        seed: the simulation's seed (``None`` for an exploration).
        transcript: the shortened transcript, one line per step.
    """

    def __init__(self, violation: Violation, *, seed: int | str | None, transcript: list[str], hint: str) -> None:
        self.violation = violation
        self.seed = seed
        self.transcript = transcript
        where = "" if seed is None else f" (seed {seed!r})"
        head = f"safety violation at {violation.time * 1e3:.3f} ms{where}: {violation.rule}: {violation.message}"
        lines = [head, *transcript, hint]
        AssertionError.__init__(self, "\n".join(lines))


# One transcript entry: (true time, kind, node, detail, state after the step).
# ``detail`` is a (sender, message) pair for deliveries, a (sender, message,
# reason) triple for drops, a string for faults, None for ticks.
Snapshot = tuple[Role, int, "NodeId | None", "NodeId | None", bool]
Entry = tuple[float, str, "NodeId | None", object, "Snapshot | None"]


def describe_message(message: Message) -> str:
    """A short, readable form of *message*."""
    match message:
        case RequestVote():
            flags = "".join((" pre-vote" if message.pre_vote else "", " transfer" if message.transfer else ""))
            return f"RequestVote t{message.term}{flags}"
        case VoteResponse():
            answer = "granted" if message.granted else "refused"
            return f"VoteResponse t{message.term} {answer}{' pre-vote' if message.pre_vote else ''}"
        case Heartbeat():
            named = "" if message.successor is None else f" successor {message.successor!s}"
            return f"Heartbeat t{message.term} #{message.seq}{named}"
        case HeartbeatResponse():
            return f"HeartbeatResponse t{message.term} #{message.seq} {'ok' if message.success else 'refused'}"
        case TimeoutNow():
            return f"TimeoutNow t{message.term}"
    return repr(message)  # pragma: no cover - every message kind is listed above


def _term_of(detail: object) -> int | None:
    if isinstance(detail, tuple) and len(detail) >= 2:
        message = detail[1]
        term = getattr(message, "term", None)
        if isinstance(term, int):
            return term
    return None


def _sender_of(detail: object) -> object:
    if isinstance(detail, tuple) and len(detail) >= 2:
        return detail[0]
    return None


def format_entry(entry: Entry) -> str:
    """One transcript line."""
    t, kind, node, detail, snap = entry
    if kind == "fault":
        what = f"-- {detail}"
        return f"{t * 1e3:12.3f} ms  {what}"
    if kind in ("deliver", "drop") and isinstance(detail, tuple):
        sender, message = detail[0], detail[1]
        what = f"{node!s} <- {sender!s}: {describe_message(message)}"
        if kind == "drop":
            what += f"  (dropped: {detail[2]})"
    else:
        what = f"{node!s}: {kind}"
    if snap is None:
        return f"{t * 1e3:12.3f} ms  {what}"
    role, term, voted_for, leader_id, lease = snap
    state = f"{role.value} t{term}"
    if voted_for is not None:
        state += f" voted {voted_for!s}"
    if leader_id is not None and role is not Role.LEADER:
        state += f" leader {leader_id!s}"
    if lease:
        state += " +lease"
    return f"{t * 1e3:12.3f} ms  {what:<52} => {state}"


@final
class Transcript:
    """The recent steps of a run, kept cheaply and formatted only when needed.

    Args:
        limit: how many steps to keep (``None``: all of them).
    """

    def __init__(self, limit: int | None = 2000) -> None:
        self._entries: deque[Entry] = deque(maxlen=limit)
        self.total = 0
        """How many steps were recorded in all (including those no longer kept)."""

    def record(self, entry: Entry) -> None:
        """Add one step."""
        self._entries.append(entry)
        self.total += 1

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry]:
        """The kept steps, oldest first."""
        return list(self._entries)

    def lines(self) -> list[str]:
        """Every kept step, formatted."""
        return [format_entry(e) for e in self._entries]

    def relevant(self, nodes: Iterable[NodeId], term: int | None, last: int = 40) -> list[str]:
        """The last *last* steps that involve *nodes* or *term*, with a header.

        A step is relevant when it happened on one of the nodes, carried a
        message from one of them or of the term, or was a fault.
        """
        wanted = dict.fromkeys(nodes)  # ordered: the header must read the same in every run
        picked: list[Entry] = []
        for entry in reversed(self._entries):
            _, kind, node, detail, _ = entry
            if (
                kind == "fault"
                or node in wanted
                or _sender_of(detail) in wanted
                or (term is not None and _term_of(detail) == term)
            ):
                picked.append(entry)
                if len(picked) >= last:
                    break
        picked.reverse()
        names = ", ".join(repr(n) for n in wanted)
        header = f"the last {len(picked)} relevant steps (nodes {names}"
        header += f"; term {term})" if term is not None else ")"
        skipped = self.total - len(self._entries)
        if skipped:
            header += f"; {skipped} older steps not kept"
        return [header + ", oldest first:", *(format_entry(e) for e in picked)]


@final
class SafetyChecker:
    """Checks the safety rules of docs/specification.md after every step of every node.

    The checker remembers what the nodes may forget (votes of earlier
    incarnations, the leaders of past terms), so it also catches a node that
    forgets, such as one restarted without its storage.
    """

    __slots__ = ("_leaders", "_lease_until", "_terms", "_votes", "checks")

    def __init__(self) -> None:
        self._terms: dict[NodeId, int] = {}
        self._votes: dict[tuple[NodeId, int], NodeId] = {}
        self._leaders: dict[int, NodeId] = {}
        self._lease_until: dict[NodeId, float] = {}
        self.checks = 0
        """How many steps were checked."""

    def copy(self) -> SafetyChecker:
        """An independent copy (the explorer keeps one per state)."""
        other = SafetyChecker.__new__(SafetyChecker)
        other._terms = self._terms.copy()
        other._votes = self._votes.copy()
        other._leaders = self._leaders.copy()
        other._lease_until = self._lease_until.copy()
        other.checks = self.checks
        return other

    @property
    def leaders(self) -> dict[int, NodeId]:
        """The leader of every term that had one (a copy)."""
        return dict(self._leaders)

    def leaders_key(self) -> tuple[tuple[int, NodeId], ...]:
        """The leaders of past terms, as a hashable value."""
        return tuple(self._leaders.items())

    def holds_lease(self, node_id: NodeId, now: float) -> bool:
        """Whether *node_id* held a lease at *now* as of its last step."""
        return self._lease_until.get(node_id, -math.inf) > now

    def changes(self, node_id: NodeId, role: Role, term: int, voted_for: NodeId | None, lease_until: float) -> bool:
        """Whether ``observe`` with these values would change what the checker remembers."""
        return (
            self._terms.get(node_id) != term
            or (voted_for is not None and (node_id, term) not in self._votes)
            or (role is Role.LEADER and term not in self._leaders)
            or self._lease_until.get(node_id) != lease_until
        )

    def observe(
        self,
        node_id: NodeId,
        role: Role,
        term: int,
        voted_for: NodeId | None,
        lease_until: float,
        now: float,
        events: tuple[LeaderChanged, ...] = (),
    ) -> Violation | None:
        """Check one node's state after a step at true time *now*.

        Args:
            node_id: the node that stepped.
            role, term, voted_for: its state after the step.
            lease_until: until when (true time) it holds a lease; ``-inf`` for none.
            now: the true time of the step.
            events: the ``LeaderChanged`` events the step emitted.

        Returns:
            The first broken rule, or ``None``.
        """
        self.checks += 1
        last = self._terms.get(node_id, 0)
        if term < last:
            return Violation(
                TERMS_NEVER_DECREASE, f"{node_id!r} went from term {last} to {term}", now, (node_id,), term
            )
        self._terms[node_id] = term
        if voted_for is not None:
            key = (node_id, term)
            earlier = self._votes.setdefault(key, voted_for)
            if earlier != voted_for:
                return Violation(
                    ONE_VOTE_PER_TERM,
                    f"{node_id!r} voted for {earlier!r} and then for {voted_for!r} in term {term}",
                    now,
                    (node_id, earlier, voted_for),
                    term,
                )
        if role is Role.LEADER:
            winner = self._leaders.setdefault(term, node_id)
            if winner != node_id:
                return Violation(
                    ONE_LEADER_PER_TERM,
                    f"term {term} has two leaders, {winner!r} and {node_id!r}",
                    now,
                    (winner, node_id),
                    term,
                )
        self._lease_until[node_id] = lease_until
        if lease_until > now:
            for other, until in self._lease_until.items():
                if until > now and other != node_id:
                    return Violation(
                        ONE_LEASE_AT_A_TIME,
                        f"{node_id!r} holds a lease (term {term}) while {other!r} holds one until {until * 1e3:.3f} ms",
                        now,
                        (node_id, other),
                        term,
                    )
        for event in events:
            if event.leader_id is not None and self._leaders.get(event.term) != event.leader_id:
                return Violation(
                    TRUTHFUL_VIEWS,
                    f"{node_id!r} reported {event.leader_id!r} as leader of term {event.term}, "
                    f"which {'nobody' if event.term not in self._leaders else repr(self._leaders[event.term])} won",
                    now,
                    (node_id, event.leader_id),
                    event.term,
                )
        return None

    def crashed(self, node_id: NodeId) -> None:
        """*node_id* stopped: a process that is gone holds no lease."""
        self._lease_until[node_id] = -math.inf

    def forgot(self, node_id: NodeId) -> None:
        """*node_id* restarted without storage: its term starts again from 0.

        Its earlier votes are still remembered, which is how the checker
        catches the double vote this allows.
        """
        self._terms[node_id] = 0
