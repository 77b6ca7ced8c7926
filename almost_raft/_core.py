"""The election state machine: pure, synchronous and deterministic.

Theory of operation
===================

This module owns every transition of one node's election, and nothing else.
It knows node ids, terms and roles.  It does not know ``Node`` objects, anyio,
a clock or the network: every input carries ``now`` (seconds on whatever clock
the caller uses), and every call returns one immutable ``Output`` saying what
to persist, what to send to whom, which events to emit and when to call
``tick`` next.  The anyio driver and the simulator both drive this same class.

Roles and transitions (Raft paper, Ongaro & Ousterhout 2014, section 5.2;
pre-vote, check-quorum, leases and transfer from Ongaro's thesis, 2014,
sections 3.10, 6.2, 6.4 and 9.6)::

    FOLLOWER --election timeout--> CANDIDATE (pre-vote phase, term unchanged)
    CANDIDATE (pre-vote) --quorum of pre-votes--> CANDIDATE (term + 1, votes self)
    CANDIDATE --quorum of votes--> LEADER
    CANDIDATE --heartbeat of its term, or any higher term--> FOLLOWER
    CANDIDATE --timeout--> CANDIDATE (a new round)
    LEADER --higher term seen / no quorum of acks within T--> FOLLOWER
    any --RemoveNode(self) or shutdown--> TERMINATED (a leader hands over first)

Each role change goes through one ``_become_*`` method.  What belongs to one
role lives in a small object that the ``_become_*`` method creates and the
next role change drops (etcd raft's ``reset``): ``_Candidacy`` (the votes of
the current round, its phase, the rivals seen, the quick retries) and
``_Leadership`` (heartbeat rounds, acknowledgements, the lease, a transfer
under way).  No flag set in one role survives into the next.

``step`` reads like etcd raft's ``Step``: first the terms, once for every
message (``_on_stale``, ``_on_higher_term``); then a vote request, decided
alike in every role (``_on_request_vote``); then the rest by role
(``_step_follower``, ``_step_candidate``, ``_step_leader``).

Rules, each with the reason:

* Terms first (paper 5.1): a message of an older term is refused or ignored
  (a request is answered with our term so that its sender catches up); a
  higher term turns the receiver into a follower of that term, except where
  stickiness or pre-vote say otherwise (below).
* Timeouts are drawn afresh for every round from ``[T, T_max]`` with the
  injected ``random.Random`` so that split votes are rare (paper 5.2).
* One vote per term, remembered in ``voted_for`` and returned in
  ``Output.persist``, which the caller saves before sending anything (5.2,
  Figure 2 "persistent state").
* Pre-vote: before raising its term a node asks whether a quorum would vote
  for it; a node cut off from the cluster therefore never inflates its term
  and cannot depose a healthy leader when it returns (thesis 9.6).
* Leader stickiness: a node that heard from a live leader less than ``T`` ago
  refuses votes and pre-votes and does not even adopt the requester's term,
  unless the request is a leadership transfer (thesis 4.2.3, 9.6).  A node
  that has just started behaves as if it had just heard from a leader, so a
  restart cannot cut a lease short.
* Check-quorum: a leader that did not hear from a quorum within ``T`` steps
  down (thesis 6.2).
* Lease: the leader's lease runs from the send time of the latest heartbeat
  round that a quorum acknowledged, for ``T`` less a margin for clock drift.
  Stickiness guarantees no other node can win a vote before it ends
  (thesis 6.4.1).
* Transfer: the leader sends ``TimeoutNow``; the target stands at once with
  ``transfer=True``, which voters honour despite stickiness, but only where a
  real transfer could have produced it: a real vote for exactly the voter's
  term + 1, from a node other than the leader the voter knows for its term.
  The old leader gives up its lease at once, for the rest of its term, and
  steps down if the transfer has not completed ``T`` after it was first
  asked for (thesis 3.10).
* Terms have no dead end: no node holds, sends or accepts a term above
  ``MAX_TERM`` (``2**62``, half the wire's range), and one message raises a
  node's term by at most ``MAX_TERM_STEP`` (``2**16``): a message from further
  ahead moves the node that far and is dropped.  Reaching ``MAX_TERM`` from
  term 0 thus takes at least ``2**46`` accepted messages
  (``docs/specification.md``, "Terms have no dead end").
* Split votes (with pre-vote only): a candidate whose round is clearly lost
  steps back if a lower id stood against it, and otherwise stands again at
  once, through a pre-vote round.  Without pre-vote, a candidate refused by a
  quorum waits for its timer, as in the paper (etcd raft's
  ``TestLeaderElectionInOneRoundRPC``).
* A node that cannot stand because its view is below ``min_nodes`` says so
  at INFO when it first finds out, and again at most every 30 seconds of its
  own clock while it lasts.

Failover without waiting for a random timer (docs/specification.md,
"Designated successor", "Held pre-votes", "Connection closed", "Overload";
none of these rules casts or counts a vote differently, so safety never
depends on them, only liveness):

* Designated successor (``Config.successor``): a leader names in every
  heartbeat the peer that should stand first if it disappears: the one it
  named before while that one acknowledges every round, otherwise the one
  that acknowledged the newest round first.  A follower named in the last
  heartbeat it accepted sets its election timer to exactly ``T`` after it,
  the end of its own stickiness window, instead of a random draw from
  ``[T, T_max]``; the others keep their random timers as the fallback.  It
  still asks for pre-votes first, and voters still refuse votes while they
  are sticky, so the lease is as long as before.
* Held pre-votes: a pre-vote that arrives inside the voter's stickiness
  window (the voter heard the last heartbeat a little later than the
  candidate) is not refused but held, and answered the moment the window
  ends, as if it arrived then (``_hold``).  A pre-vote changes nothing on
  the voter, so this is a change of timing only.  A candidate whose
  pre-votes were granted while its own window was still open enters the
  vote phase when its window ends, without asking again.
* Connection closed (``peer_disconnected``): when the transport reports that
  the leader's connection was closed by its kernel, the follower it named
  successor starts its pre-vote at once; with held pre-votes and its own
  vote postponed to the end of its window, it becomes a candidate for real
  the moment the last lease must have ended, one pre-vote round trip sooner.
* Transfer retry: a leader whose transfer target has not stood within
  ``TRANSFER_RETRY_ROUND_TRIPS`` heartbeat round trips sends ``TimeoutNow``
  to the next-best peer; the lease stays given up and the first transfer
  deadline stands (thesis 3.10).
* Overload (``Config.overload_backoff``): a candidacy round lost to its
  timer doubles the random part of the next draws (up to ``BACKOFF_CAP``
  times; hearing a leader or winning resets it), and a timer that fires
  more than ``T / 2`` late is let go once: a follower or candidate re-arms
  instead of standing, a leader sends its heartbeats but skips that
  check-quorum test.  A late timer means this process was stalled; the
  messages that would have kept it quiet may be waiting in its input.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Final, TypeVar, final

from ._config import Config as Config  # re-exported: tests and tools build cores from here
from ._messages import (
    MAX_TERM,
    MAX_TERM_STEP,
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
from ._protocols import HardState

if TYPE_CHECKING:
    from typing_extensions import assert_never
else:  # pragma: no cover - only the name is needed at run time

    def assert_never(value: object) -> None:
        raise AssertionError(f"unhandled value: {value!r}")


logger = logging.getLogger("almost_raft")

_NEVER = math.inf
# Module-level aliases of the roles for the per-message paths: on CPython
# 3.11 an enum member costs a slow attribute lookup (~0.15 us) each time.
_FOLLOWER: Final = Role.FOLLOWER
_CANDIDATE: Final = Role.CANDIDATE
_LEADER: Final = Role.LEADER
_TERMINATED: Final = Role.TERMINATED
_T = TypeVar("_T")

# Why a node cannot stand for election (``Election._cannot_stand``).
_PAUSED: Final = "candidacy paused"
_TOO_FEW: Final = "cluster below min_nodes"
_NO_TERM_LEFT: Final = "no term left (MAX_TERM reached)"
_UNABLE_LOG_INTERVAL: Final = 30.0
"""Seconds, by the node's own clock, between two log lines saying it still cannot stand."""

BACKOFF_CAP: Final = 4
"""How far a node's timeouts back off: the random part of a draw is at most this many times ``T_max - T``.

Each candidacy round lost to its timer doubles the factor (1, 2, 4); hearing
a leader or winning resets it (``Config.overload_backoff``; docs/specification.md, "Overload").
"""

TRANSFER_RETRY_ROUND_TRIPS: Final = 3
"""A leadership transfer not completed within this many heartbeat round trips is retried with the next-best peer."""


def _rank(node_id: NodeId) -> tuple[int, int, str]:
    """A total order over node ids (ints before strs), for the split-vote rule."""
    return (0, node_id, "") if isinstance(node_id, int) else (1, 0, node_id)


@final
@dataclass(frozen=True, slots=True)
class Output:
    """What one call to the core asks the caller to do, in this order.

    Attributes:
        persist: the new ``HardState`` to save before anything is sent, or ``None``.
        sends: ``(to_id, message)`` pairs, in order.
        events: ``LeaderChanged`` events to publish, in order.
        next_deadline: when to call ``tick`` next (absolute, same clock as ``now``).
    """

    persist: HardState | None
    sends: tuple[tuple[NodeId, Message], ...]
    events: tuple[LeaderChanged, ...]
    next_deadline: float


def _trusted(cls: type[_T]) -> Callable[..., _T]:
    """A fast constructor of *cls* (a frozen slotted dataclass of 2 or 4 fields) for trusted values.

    The core builds an ``Output`` for every input and a reply for most, from
    values it has already checked (its own term and id, fields of a validated
    message).  A frozen dataclass's ``__init__`` stores each field through
    ``object.__setattr__`` and the messages validate again in
    ``__post_init__``: about 60 % of the cost of a heartbeat.  Storing through
    the slot descriptors builds the same value (equal, hashable, immutable)
    in a third of the time.  A class of any other shape keeps its constructor.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if len(names) not in (2, 4) or getattr(cls, "__slots__", None) != tuple(names):
        return cls
    new = object.__new__
    if len(names) == 2:
        set_x, set_y = (getattr(cls, name).__set__ for name in names)

        def make2(a: object, b: object) -> _T:
            obj = new(cls)
            set_x(obj, a)
            set_y(obj, b)
            return obj

        return make2
    set_a, set_b, set_c, set_d = (getattr(cls, name).__set__ for name in names)

    def make(a: object, b: object, c: object, d: object) -> _T:
        obj = new(cls)
        set_a(obj, a)
        set_b(obj, b)
        set_c(obj, c)
        set_d(obj, d)
        return obj

    return make


_new_output = _trusted(Output)
_new_heartbeat = _trusted(Heartbeat)
_new_heartbeat_response = _trusted(HeartbeatResponse)
_new_vote_response = _trusted(VoteResponse)
_new_hard_state = _trusted(HardState)


def worth_logging(count: int) -> bool:
    """Whether the *count*-th piece of bad input is logged: the first ten, then one in a thousand.

    A host that floods a node with bad frames must not flood its log too;
    ``status()`` counts every one.
    """
    return count <= 10 or count % 1000 == 0


@final
@dataclass(slots=True)
class CoreCounters:
    """Counters kept by the core; each only grows."""

    elections_started: int = 0
    elections_won: int = 0
    elections_lost: int = 0
    pre_votes_started: int = 0
    votes_granted: int = 0
    votes_refused: int = 0
    pre_votes_refused: int = 0
    step_downs: int = 0
    check_quorum_step_downs: int = 0
    transfers_started: int = 0
    transfer_retries: int = 0
    pre_votes_held: int = 0
    late_timers: int = 0
    disconnects: int = 0
    messages_rejected: int = 0
    rejected_by_kind: dict[str, int] = field(default_factory=dict)


@final
class _Candidacy:
    """What a candidate knows, from the moment it stands until it leaves the role.

    Created when a follower stands (``Election._candidacy``), kept across the
    rounds of one candidacy (a pre-vote round, then the real one, a quick
    retry, a round left after a split vote), and dropped by
    ``_become_follower`` and ``_become_leader``.

    Attributes:
        pre_phase: this round asks for pre-votes; the term is not raised yet.
        transfer: this round was started by ``TimeoutNow`` (``transfer=True``).
        granted: who granted this round's (pre-)vote, this node included.
        refused: who refused it.
        round_started_at: when this round started.
        split_pending: a quorum answered this real round without electing
            this node; the timer was shortened to leave it (``_check_split_vote``).
        rivals: candidates seen standing in this node's own term during this
            candidacy (the split-vote rule).
        quick_retries: quick pre-vote retries made in this campaign (at most 3).
        quick_retry_armed: the pending timer is a quick retry, not a full timeout.
        ready: a quorum granted this pre-vote round while this node's own
            stickiness window was still open: it enters the vote phase when
            the window ends, without asking again (``_postpone_candidacy``).
    """

    __slots__ = (
        "granted",
        "pre_phase",
        "quick_retries",
        "quick_retry_armed",
        "ready",
        "refused",
        "rivals",
        "round_started_at",
        "split_pending",
        "transfer",
    )

    def __init__(self) -> None:
        self.pre_phase = True
        self.transfer = False
        self.granted: dict[NodeId, None] = {}
        self.refused: dict[NodeId, None] = {}
        self.round_started_at = -_NEVER
        self.split_pending = False
        self.rivals: dict[NodeId, None] = {}
        self.quick_retries = 0
        self.quick_retry_armed = False
        self.ready = False

    def new_round(self, self_id: NodeId, now: float, *, pre_phase: bool, transfer: bool) -> None:
        """Start a round in which only this node's own (pre-)vote is counted so far."""
        self.pre_phase = pre_phase
        self.transfer = transfer
        self.granted = {self_id: None}
        self.refused = {}
        self.round_started_at = now
        self.split_pending = False
        self.ready = False

    def copy(self) -> _Candidacy:
        """A copy sharing nothing mutable (for ``almost_raft.testing.explore``)."""
        new = _Candidacy.__new__(_Candidacy)
        for name in _Candidacy.__slots__:
            value = getattr(self, name)
            setattr(new, name, value.copy() if type(value) is dict else value)
        return new


@final
class _Leadership:
    """What a leader knows, from its win until it steps down (created by ``_become_leader``).

    Attributes:
        since: when it won.
        voters: who voted for it (a hand-over target before any acknowledgement).
        seq: the last heartbeat round sent.
        sent_at: the send time of each round of the last ``T``.
        acked_seq: the newest round each peer acknowledged.
        last_ack_at: when each peer last acknowledged a round.
        lease_expires_at: when the lease ends (``-inf``: no lease).
        lease_given_up: it sent ``TimeoutNow``: no lease for the rest of its term.
        heartbeat_deadline: when the next round is due.
        transfer_deadline: when it steps down if a transfer it started has not
            completed (``inf``: none under way); set by the first transfer
            and never moved.
        transfer_retry_at: when it hands over to the next-best peer if the
            transfer has not completed by then (``inf``: no retry due).
        transfer_target: the peer that was sent ``TimeoutNow`` last.
        transfer_tried: every peer sent ``TimeoutNow`` in this term.
        successor: the peer named in the last heartbeat round (``None``: none).
        gone: peers whose connection closed (``PeerDisconnected``) since they
            last acknowledged: neither named successor nor handed over to.
    """

    __slots__ = (
        "acked_seq",
        "gone",
        "heartbeat_deadline",
        "last_ack_at",
        "lease_expires_at",
        "lease_given_up",
        "sent_at",
        "seq",
        "since",
        "successor",
        "transfer_deadline",
        "transfer_retry_at",
        "transfer_target",
        "transfer_tried",
        "voters",
    )

    def __init__(self, now: float, voters: dict[NodeId, None]) -> None:
        self.since = now
        self.voters = voters
        self.seq = 0
        self.sent_at: dict[int, float] = {}
        self.acked_seq: dict[NodeId, int] = {}
        self.last_ack_at: dict[NodeId, float] = {}
        self.lease_expires_at = -_NEVER
        self.lease_given_up = False
        self.heartbeat_deadline = _NEVER
        self.transfer_deadline = _NEVER
        self.transfer_retry_at = _NEVER
        self.transfer_target: NodeId | None = None
        self.transfer_tried: dict[NodeId, None] = {}
        self.successor: NodeId | None = None
        self.gone: dict[NodeId, None] = {}

    def copy(self) -> _Leadership:
        """A copy sharing nothing mutable (for ``almost_raft.testing.explore``)."""
        new = _Leadership.__new__(_Leadership)
        for name in _Leadership.__slots__:
            value = getattr(self, name)
            setattr(new, name, value.copy() if type(value) is dict else value)
        return new


@final
class Election:
    """One node's election state machine.

    Args:
        config: the checked configuration (``make_config``).
        peers: the ids of the peers known at start (not ``self_id``).
        hard_state: the state loaded from storage, or ``None`` for a new node.
        rng: the only source of randomness.
        now: the current time; the node refuses votes until ``now + T``.

    Raises:
        ValueError: ``hard_state.term`` is above ``MAX_TERM``.
    """

    def __init__(
        self,
        config: Config,
        *,
        peers: Iterable[NodeId],
        hard_state: HardState | None,
        rng: random.Random,
        now: float,
    ) -> None:
        hs = hard_state or HardState(0, None)
        if hs.term > MAX_TERM:
            raise ValueError(f"the stored term {hs.term} is above MAX_TERM ({MAX_TERM})")
        self.config = config
        self.counters = CoreCounters()
        self._rng = rng
        self._self_id = config.self_id
        # A dict, not a set: iteration order must not depend on hash seeds,
        # or the same seed would not replay the same run.
        self._peers: dict[NodeId, None] = dict.fromkeys(peers)
        self._term = hs.term
        self._voted_for = hs.voted_for
        self._persisted = hs
        self._role = _FOLLOWER
        self._leader_id: NodeId | None = None
        # Who won the current term as far as this node knows.  Unlike
        # _leader_id it outlives losing touch within the term (timeout,
        # check-quorum step-down), so a second node claiming the same term is
        # still recognised as nonsense (paper 5.2: one leader per term).
        self._term_leader: NodeId | None = None
        self._emitted: tuple[int, NodeId | None] = (self._term, None)
        # A node that has just started behaves as if it had just heard from a
        # leader: a restart must not cut another node's lease short.
        self._sticky_until = now + config.election_timeout
        self._last_leader_contact = -_NEVER
        self._candidacy_paused = False
        # Overload (Config.overload_backoff): the factor on the random part of
        # each timeout, and whether the last timer that fired late was let go.
        self._backoff = 1
        self._late_skipped = False
        self._election_deadline = now + self._random_timeout()
        # The successor named in the last heartbeat this node accepted.
        self._named: NodeId | None = None
        # Pre-vote requests that arrived inside this node's stickiness
        # window, answered when it ends (by candidate: the latest request).
        self._held: dict[NodeId, RequestVote] = {}
        # When this node last said that it cannot stand (-inf: it can).
        self._unable_logged_at = -_NEVER
        # The state of the current role (see the theory of operation).
        self._cand: _Candidacy | None = None
        self._lead: _Leadership | None = None
        # output under construction
        self._sends: list[tuple[NodeId, Message]] = []
        self._events: list[LeaderChanged] = []

    # ------------------------------------------------------------------ views

    @property
    def self_id(self) -> NodeId:
        """This node's id."""
        return self._self_id

    @property
    def role(self) -> Role:
        """The current role."""
        return self._role

    @property
    def term(self) -> int:
        """The current term."""
        return self._term

    @property
    def voted_for(self) -> NodeId | None:
        """The candidate voted for in the current term, or ``None``."""
        return self._voted_for

    @property
    def leader_id(self) -> NodeId | None:
        """The leader of the current term as far as this node knows, or ``None``."""
        return self._leader_id

    @property
    def peer_ids(self) -> tuple[NodeId, ...]:
        """The known peers, in the order they became known."""
        return tuple(self._peers)

    @property
    def in_pre_vote(self) -> bool:
        """Whether a candidate is still asking for pre-votes (its term not raised yet)."""
        return self._cand is not None and self._cand.pre_phase

    @property
    def next_deadline(self) -> float:
        """When ``tick`` has something to do next (``inf`` once terminated)."""
        lead = self._lead
        if lead is not None:
            return min(lead.heartbeat_deadline, lead.transfer_deadline, lead.transfer_retry_at)
        if self._role is _TERMINATED:
            return _NEVER
        if self._held and self._sticky_until < self._election_deadline:
            return self._sticky_until
        return self._election_deadline

    @property
    def lease_expires_at(self) -> float:
        """When the current lease ends (``-inf`` when this node holds none)."""
        lead = self._lead
        return -_NEVER if lead is None else lead.lease_expires_at

    @property
    def last_leader_contact(self) -> float:
        """When this node last accepted a heartbeat from a leader (``-inf``: never)."""
        return self._last_leader_contact

    @property
    def candidacy_paused(self) -> bool:
        """Whether this node is kept from standing for election (``pause_candidacy``)."""
        return self._candidacy_paused

    def set_candidacy_paused(self, paused: bool, now: float) -> Output:
        """Keep this node from standing (a node being drained), or let it stand again.

        A paused node still votes and follows; it ignores its election timer
        and ``TimeoutNow``.  Pausing a leader hands leadership over at once;
        pausing a candidate makes it a follower.
        """
        if self._role is _TERMINATED or paused == self._candidacy_paused:
            return self._flush()
        self._candidacy_paused = paused
        logger.info("node %r term %d: candidacy %s", self._self_id, self._term, "paused" if paused else "resumed")
        if paused and self._role is _LEADER:
            return self.transfer_leadership(None, now)
        if paused and self._role is _CANDIDATE:
            self._become_follower(now, self._term, None)
        return self._flush()

    def holds_lease(self, now: float) -> bool:
        """Whether this node leads under a valid lease at *now*."""
        lead = self._lead
        return lead is not None and now < lead.lease_expires_at

    @property
    def named_successor(self) -> NodeId | None:
        """The successor named in the last heartbeat this node accepted (``None`` on a leader, or none named)."""
        lead = self._lead
        return lead.successor if lead is not None else self._named

    def last_ack_at(self, node_id: NodeId) -> float | None:
        """When this leader last heard a heartbeat acknowledgement from *node_id* (``None`` on a non-leader)."""
        lead = self._lead
        return None if lead is None else lead.last_ack_at.get(node_id)

    @property
    def cluster_size(self) -> int:
        """Known peers plus this node."""
        return len(self._peers) + 1

    @property
    def quorum(self) -> int:
        """A strict majority of ``max(cluster_size, min_nodes)``."""
        return max(self.cluster_size, self.config.min_nodes) // 2 + 1

    # ----------------------------------------------------------------- inputs

    def step(self, message: Message, now: float) -> Output:
        """Handle *message* received at *now*.

        First the terms, once for every message (paper 5.1); then a vote
        request, decided alike in every role; then the rest by role.  A
        message from an unknown node or from this node itself, or with a
        term above ``MAX_TERM``, is dropped, logged and counted in
        ``counters.messages_rejected``; it changes nothing.
        """
        if self._role is _TERMINATED:
            return self._flush()
        sender = message.sender
        if sender == self._self_id or sender not in self._peers:
            self._drop(message, "from this node itself" if sender == self._self_id else "from an unknown node")
            return self._flush()
        term = message.term
        if term != self._term:
            if term < self._term:
                self._on_stale(message)
                return self._flush()
            if not self._on_higher_term(message, now):
                return self._flush()
        # The message is of this node's term now (a pre-vote grant: of the
        # term this node would stand in).
        role = self._role
        if role is _FOLLOWER:
            self._step_follower(message, now)
        elif role is _LEADER:
            self._step_leader(message, now)
        else:
            self._step_candidate(message, now)
        return self._flush()

    def tick(self, now: float) -> Output:
        """Fire whatever timer is due at *now*; before ``next_deadline`` it does nothing."""
        match self._role:
            case Role.FOLLOWER | Role.CANDIDATE:
                if self._held and now >= self._sticky_until:
                    self._answer_held()
                deadline = self._election_deadline
                if now >= deadline:
                    if self._let_late_timer_go(now, deadline):
                        self._stand_down_late(now)
                    else:
                        self._on_election_timeout(now)
            case Role.LEADER:
                lead = self._lead
                assert lead is not None
                if now >= lead.transfer_deadline:
                    logger.info(
                        "node %r term %d: leadership transfer did not complete within %.3fs, stepping down",
                        self._self_id,
                        self._term,
                        self.config.election_timeout,
                    )
                    self._become_follower(now, self._term, None)
                else:
                    if now >= lead.transfer_retry_at:
                        self._retry_transfer(lead, now)
                    if now >= lead.heartbeat_deadline:
                        self._on_heartbeat_due(now)
            case Role.TERMINATED:
                pass
            case _:
                assert_never(self._role)
        return self._flush()

    def add_peer(self, node_id: NodeId, now: float) -> Output:
        """Add *node_id* to this node's view (``AddNode``); a known id changes nothing."""
        if self._role is _TERMINATED or node_id in self._peers:
            return self._flush()
        if node_id == self._self_id:
            return self._reject_control("AddNode", f"AddNode({node_id!r}) names this node itself")
        if self.cluster_size + 1 > self.config.max_nodes:
            return self._reject_control(
                "AddNode", f"AddNode({node_id!r}) would grow the cluster beyond max_nodes={self.config.max_nodes}"
            )
        self._peers[node_id] = None
        logger.info(
            "node %r term %d: added peer %r (cluster size %d)", self._self_id, self._term, node_id, self.cluster_size
        )
        if self._lead is not None:
            # Tell the newcomer who leads without waiting for the next round.
            lead = self._lead
            self._sends.append((node_id, _new_heartbeat(self._term, self._self_id, lead.seq, lead.successor)))
        return self._flush()

    def remove_peer(self, node_id: NodeId, now: float) -> Output:
        """Remove *node_id* from this node's view (``RemoveNode``).

        Removing this node's own id is ``shutdown``.  Removing the leader makes
        this node stand for election at once instead of waiting out its timeout
        (it asks for pre-votes at once; it votes for itself only once its
        leader stickiness has run out, see ``_postpone_candidacy``).
        """
        if self._role is _TERMINATED:
            return self._flush()
        if node_id == self._self_id:
            return self.shutdown(now)
        if node_id not in self._peers:
            return self._reject_control("RemoveNode", f"RemoveNode({node_id!r}) names an unknown node")
        del self._peers[node_id]
        self._held.pop(node_id, None)
        cand, lead = self._cand, self._lead
        if cand is not None:
            cand.granted.pop(node_id, None)
            cand.refused.pop(node_id, None)
        if lead is not None:
            lead.acked_seq.pop(node_id, None)
            lead.last_ack_at.pop(node_id, None)
            if lead.successor == node_id:
                lead.successor = None
        logger.info(
            "node %r term %d: removed peer %r (cluster size %d)", self._self_id, self._term, node_id, self.cluster_size
        )
        if cand is not None:
            if self.cluster_size < self.config.min_nodes:
                self._become_follower(now, self._term, None)
                self._note_unable(now, _TOO_FEW)
            else:
                self._check_votes(now)
        elif lead is not None:
            self._update_lease()
        elif self._leader_id == node_id:
            # The leader left this node's view, but it was heard: stickiness
            # stays, or a lease this node acknowledged could be cut short
            # (the leader, which may not know it was removed, still relies on
            # it).  Found by the simulator: tests/simulation/test_regressions.py.
            self._leader_id = None
            why = self._cannot_stand()
            if why is None:
                self._start_campaign(now)
            else:
                self._note_unable(now, why)
        return self._flush()

    def transfer_leadership(self, target_id: NodeId | None, now: float) -> Output:
        """Hand leadership to *target_id* (``None``: the most recently acknowledging peer).

        Changes nothing on a non-leader, or when the target is unknown or this
        node.  The leader steps down ``T`` after the first request of its term
        if no transfer has completed by then; asking again never moves that
        deadline, so a leader without a lease cannot stay in office by being
        asked again and again.
        """
        lead = self._lead
        if lead is None:
            logger.info("node %r term %d: TransferLeadership ignored, not the leader", self._self_id, self._term)
            return self._flush()
        if target_id is None:
            target_id = self._best_transfer_target(lead)
            if target_id is None:
                logger.info(
                    "node %r term %d: TransferLeadership ignored, no peer to hand over to", self._self_id, self._term
                )
                return self._flush()
        elif target_id == self._self_id or target_id not in self._peers:
            logger.info(
                "node %r term %d: TransferLeadership(%r) ignored, %s",
                self._self_id,
                self._term,
                target_id,
                "that is this node" if target_id == self._self_id else "unknown node",
            )
            return self._flush()
        self._send_timeout_now(target_id, now)
        if lead.transfer_deadline == _NEVER:
            lead.transfer_deadline = now + self.config.election_timeout
        self._arm_transfer_retry(lead, now)
        return self._flush()

    def peer_disconnected(self, node_id: NodeId, now: float) -> Output:
        """The transport saw the connection to *node_id* closed or reset by its kernel (``PeerDisconnected``).

        A hint that the peer's process is gone, never a vote.  A follower
        named successor by that peer, its leader, starts its pre-vote round
        at once: voters answer only when their own stickiness window ends
        (``_hold``), and it votes for itself only when its own window ends
        (``_postpone_candidacy``), so nothing happens before the lease must
        have ended; it only saves the pre-vote round trip after the window.
        A leader names another successor when it loses the one it named, and
        hands over to the next-best peer at once when the target of a
        transfer under way goes.  Any other notice changes nothing.  An id
        outside the view, or this node's own, is refused and counted.
        """
        if self._role is _TERMINATED:
            return self._flush()
        if node_id == self._self_id or node_id not in self._peers:
            why = "names this node itself" if node_id == self._self_id else "names an unknown node"
            return self._reject_control("PeerDisconnected", f"PeerDisconnected({node_id!r}) {why}")
        self.counters.disconnects += 1
        lead = self._lead
        if lead is not None:
            lead.gone[node_id] = None  # until it acknowledges again
            if lead.successor == node_id:
                lead.successor = None  # named anew in the next round
            if lead.transfer_target == node_id and now < lead.transfer_deadline:
                self._retry_transfer(lead, now)
            return self._flush()
        if (
            self._role is _FOLLOWER
            and node_id == self._leader_id
            and self._named == self._self_id
            and self.config.successor
            and self._cannot_stand() is None
        ):
            logger.info(
                "node %r term %d: the connection to leader %r closed; standing as its successor",
                self._self_id,
                self._term,
                node_id,
            )
            self._start_campaign(now)
        return self._flush()

    def shutdown(self, now: float) -> Output:
        """End this node's election; a leader first hands over with ``TimeoutNow``."""
        if self._role is _TERMINATED:
            return self._flush()
        lead = self._lead
        if lead is not None:
            target = self._best_transfer_target(lead)
            if target is not None:
                self._send_timeout_now(target, now)
            self.counters.step_downs += 1
        logger.info("node %r term %d: election terminated", self._self_id, self._term)
        self._role = _TERMINATED
        self._leader_id = None
        self._cand = None
        self._lead = None
        self._held.clear()
        return self._flush()

    # ------------------------------------------------------------------ terms

    def _on_stale(self, m: Message) -> None:
        """A message of an older term (paper 5.1).

        A request is refused with this node's term, so that its sender
        catches up ("if a server receives a request with a stale term number,
        it rejects the request"); a stale leader's heartbeat is answered the
        same way and does not reset the timer, so a deposed leader cannot
        hold the cluster back.  Answers and transfers of an older term are
        ignored.
        """
        match m:
            case RequestVote():
                self._answer_vote(m, granted=False)
            case Heartbeat():
                self._sends.append((m.leader_id, _new_heartbeat_response(self._term, self._self_id, False, m.seq)))
            case VoteResponse() | HeartbeatResponse() | TimeoutNow():
                pass
            case _:
                assert_never(m)

    def _on_higher_term(self, m: Message, now: float) -> bool:
        """A message of a higher term: become a follower of that term (paper 5.1), unless a rule says otherwise.

        The exceptions: a term above ``MAX_TERM`` is nonsense and dropped; a
        vote request to a sticky node changes nothing, not even the term
        (thesis 4.2.3); a pre-vote request is only a question, and a pre-vote
        grant names the term this node would stand in (thesis 9.6); and no
        message moves the term by more than ``MAX_TERM_STEP`` (``_too_far``).

        Returns:
            Whether the message remains to be handled, in the new term.
        """
        if m.term > MAX_TERM:
            self._drop(m, f"its term is above MAX_TERM ({MAX_TERM}), which no node ever holds")
            return False
        leader: NodeId | None = None
        reach = m.term
        match m:
            case RequestVote():
                if self._sticky(now) and not self._honours_transfer(m):
                    if m.pre_vote and self._role is not _LEADER:
                        self._hold(m)
                    else:
                        self._refuse_while_sticky(m)
                elif m.pre_vote:
                    self._answer_vote(m, granted=True)
                elif not self._too_far(m, reach, now):
                    self._become_follower(now, m.term, None)
                    self._vote(m, now)
                return False
            case VoteResponse(pre_vote=True, granted=True):
                return True
            case Heartbeat():
                leader = m.leader_id
            case TimeoutNow():
                # Only a leader sends TimeoutNow; its target stands in the next term.
                leader = m.leader_id
                reach = m.term + 1
            case VoteResponse() | HeartbeatResponse():
                pass
            case _:
                assert_never(m)
        if self._too_far(m, reach, now):
            return False
        self._become_follower(now, m.term, leader)
        return True

    def _too_far(self, m: Message, reach: int, now: float) -> bool:
        """Keep one message from raising the term by more than ``MAX_TERM_STEP``.

        A message that would take this node further (to *reach*) moves it
        ``MAX_TERM_STEP`` terms up, as a follower that knows no leader, and
        is dropped.  Raising one's own term is always safe: it is what a
        node that timed out and was not heard would have done.  A node far
        behind catches up one step per message it receives from the front
        (a leader's heartbeats do it within a few rounds), while hostile
        input needs ``2**46`` accepted messages to bring a term from 0 to
        ``MAX_TERM`` (docs/specification.md, "Terms have no dead end").
        """
        if reach - self._term <= MAX_TERM_STEP:
            return False
        self._become_follower(now, self._term + MAX_TERM_STEP, None)
        self._drop(m, f"its term is more than {MAX_TERM_STEP} terms ahead; moved up to term {self._term} only")
        return True

    def _honours_transfer(self, m: RequestVote) -> bool:
        """Whether *m* may skip leader stickiness as a leadership transfer (thesis 3.10).

        Only where a real transfer could have produced it: the leader of this
        node's term ``t`` sent ``TimeoutNow`` to the candidate, which stands
        in ``t + 1``.  So a real vote (not a pre-vote) for exactly ``t + 1``,
        from someone other than the leader this node knows for ``t`` (a leader
        never hands over to itself).  Any other request flagged ``transfer``
        is an ordinary one, stickiness included: a flag alone must not let a
        message carry a term past a sticky node (docs/specification.md, "Terms have no dead end").
        """
        return m.transfer and not m.pre_vote and m.term == self._term + 1 and m.candidate_id != self._term_leader

    # ------------------------------------------------------------ per role

    def _step_follower(self, m: Message, now: float) -> None:
        """A follower follows the heartbeats of its term's leader and stands at once on its ``TimeoutNow``."""
        match m:
            case Heartbeat():
                self._on_heartbeat(m, now)
            case RequestVote():
                self._on_request_vote(m, now)
            case TimeoutNow():
                self._on_timeout_now(m, now)
            case VoteResponse() | HeartbeatResponse():
                pass  # answers to a role it no longer has
            case _:
                assert_never(m)

    def _step_candidate(self, m: Message, now: float) -> None:
        """A candidate counts votes, and follows whoever won its term (paper 5.2)."""
        match m:
            case VoteResponse():
                self._on_vote_response(m, now)
            case Heartbeat():
                self._on_heartbeat(m, now)
            case RequestVote():
                self._on_request_vote(m, now)
            case TimeoutNow():
                self._on_timeout_now(m, now)
            case HeartbeatResponse():
                pass
            case _:
                assert_never(m)

    def _step_leader(self, m: Message, now: float) -> None:
        """A leader counts acknowledgements (check-quorum, lease); a second leader of its term is nonsense."""
        match m:
            case HeartbeatResponse():
                self._on_heartbeat_response(m, now)
            case RequestVote():
                self._on_request_vote(m, now)
            case Heartbeat():
                # Two leaders in one term cannot happen while the rules hold.
                self._drop(m, f"claims leadership of term {m.term}, which this node leads")
            case TimeoutNow():
                self._drop(m, f"sent by {m.leader_id!r}, but term {m.term} is led by this node")
            case VoteResponse():
                pass  # late answers to the round it won
            case _:
                assert_never(m)

    # ------------------------------------------------------------- handlers

    def _on_request_vote(self, m: RequestVote, now: float) -> None:
        """A (pre-)vote request of this node's term, alike in every role."""
        if m.pre_vote:
            # A pre-vote names the term its sender would stand in: one naming
            # ours comes from a node behind us.  Refused with our term so that
            # it catches up (paper 5.1).
            self._answer_vote(m, granted=False)
        elif self._sticky(now):
            # A transfer names the voter's next term, never its current one.
            self._refuse_while_sticky(m)
        else:
            self._vote(m, now)

    def _hold(self, m: RequestVote) -> None:
        """Hold a pre-vote that arrived inside this node's stickiness window: answer it when the window ends.

        Leader stickiness (thesis 4.2.3) forbids granting it now, but a
        refusal would only send the candidate into a retry after some fixed
        delay, while the window will end at a time this node knows.  So the
        request waits, and is answered (by ``_answer_held``) the moment the
        window ends, as if it had arrived then: granted if the window really
        ended (no heartbeat extended it meanwhile) and the term is still
        above this node's.  A pre-vote changes nothing on the voter, so
        holding one changes no term, vote or timer; the candidate's own
        round timer still runs.  The latest request of each candidate is
        kept, so at most one per peer waits.
        """
        logger.debug(
            "node %r term %d: holding the pre-vote of %r for term %d until its stickiness window ends at %.3f",
            self._self_id,
            self._term,
            m.candidate_id,
            m.term,
            self._sticky_until,
        )
        self.counters.pre_votes_held += 1
        self._held[m.candidate_id] = m

    def _answer_held(self) -> None:
        """The stickiness window has ended: answer the held pre-votes as if they arrived now (``_hold``).

        Called by ``tick`` at the end of the window, wherever heartbeats
        heard meanwhile have moved it (``next_deadline`` follows the window).
        """
        held, self._held = self._held, {}
        for m in held.values():
            # Granted if the term still lies ahead; otherwise refused with our term (paper 5.1).
            self._answer_vote(m, granted=m.term > self._term)

    def _refuse_held(self) -> None:
        """Refuse every held pre-vote at once (this node leads: a leader is sticky for its whole term)."""
        held, self._held = self._held, {}
        for m in held.values():
            self._answer_vote(m, granted=False)

    def _refuse_while_sticky(self, m: RequestVote) -> None:
        # Leader stickiness (thesis 4.2.3): the request changes nothing, not
        # even our term, so a returning node cannot depose a leader.
        logger.debug(
            "node %r term %d: refused %s from %r for term %d, a leader was heard less than T ago",
            self._self_id,
            self._term,
            "pre-vote" if m.pre_vote else "vote",
            m.candidate_id,
            m.term,
        )
        self._answer_vote(m, granted=False)

    def _vote(self, m: RequestVote, now: float) -> None:
        """Decide a vote of this node's term: one vote per term (paper 5.2).

        A node that knows this term's leader votes for no one else.
        """
        can_vote = self._voted_for == m.candidate_id or (self._voted_for is None and self._leader_id is None)
        if can_vote:
            self._voted_for = m.candidate_id
            # Granting a vote resets the election timer (paper 5.2, Figure 2).
            self._election_deadline = now + self._random_timeout()
        elif self._cand is not None and not self._cand.pre_phase:
            # A rival stands in our round: remembered for _check_split_vote.
            self._cand.rivals[m.candidate_id] = None
        self._answer_vote(m, granted=can_vote)

    def _answer_vote(self, m: RequestVote, *, granted: bool) -> None:
        # A granted answer carries the requested term; a refusal our own.
        term = m.term if granted else self._term
        if granted:
            self.counters.votes_granted += 1
        else:
            self.counters.votes_refused += 1
            if m.pre_vote:
                self.counters.pre_votes_refused += 1
        self._sends.append((m.candidate_id, _new_vote_response(term, self._self_id, granted, m.pre_vote)))

    def _on_vote_response(self, m: VoteResponse, now: float) -> None:
        """Count an answer to this candidate's current round (by distinct voter: a duplicate counts once)."""
        cand = self._cand
        assert cand is not None
        if m.pre_vote != cand.pre_phase:
            return  # an answer to the other phase: stale
        # A pre-vote grant names the term we would stand in; a refusal the
        # voter's own term, which equals ours here (a higher one made us a
        # follower already).  A real answer is of our term.
        if m.pre_vote and m.term != (self._term + 1 if m.granted else self._term):
            return
        if m.granted:
            cand.granted[m.voter_id] = None
            cand.refused.pop(m.voter_id, None)
        elif m.voter_id not in cand.granted:
            cand.refused[m.voter_id] = None
        self._check_votes(now)

    def _on_heartbeat(self, m: Heartbeat, now: float) -> None:
        """A heartbeat of this node's term: its sender won the term; follow it (paper 5.2)."""
        if self._term_leader is not None and self._term_leader != m.leader_id:
            # Two leaders in one term cannot happen while the rules hold.
            self._drop(m, f"claims leadership of term {m.term}, led by {self._term_leader!r}")
            return
        if self._role is not _FOLLOWER or self._leader_id != m.leader_id:
            # (A follower hearing its known leader again, the common case,
            # is one already: _become_follower would change nothing.)
            self._become_follower(now, m.term, m.leader_id)
        self._last_leader_contact = now
        config = self.config
        self._sticky_until = now + config.election_timeout
        # Hearing a leader ends any backoff (Config.overload_backoff).
        self._backoff = 1
        self._late_skipped = False
        self._named = successor = m.successor
        if successor == self._self_id and config.successor:
            # The designated successor stands the moment its own stickiness
            # window ends, not after a random timeout (docs/specification.md,
            # "Designated successor").
            self._election_deadline = self._sticky_until
        else:
            self._election_deadline = now + self._random_timeout()
        self._sends.append((m.leader_id, _new_heartbeat_response(self._term, self._self_id, True, m.seq)))

    def _on_heartbeat_response(self, m: HeartbeatResponse, now: float) -> None:
        """Count an acknowledgement of one of this leader's rounds (thesis 6.2, 6.4)."""
        if not m.success:
            return
        lead = self._lead
        assert lead is not None
        if m.seq > lead.seq:
            self._drop(m, f"acknowledges round {m.seq}, which was never sent (last {lead.seq})")
            return
        if m.seq > lead.acked_seq.get(m.follower_id, 0):
            lead.acked_seq[m.follower_id] = m.seq
        lead.last_ack_at[m.follower_id] = now
        if lead.gone:
            lead.gone.pop(m.follower_id, None)
        self._update_lease()

    def _on_timeout_now(self, m: TimeoutNow, now: float) -> None:
        """The leader of this node's term hands over to it: stand at once (thesis 3.10)."""
        if self._term_leader is not None and self._term_leader != m.leader_id:
            self._drop(m, f"sent by {m.leader_id!r}, but term {m.term} is led by {self._term_leader!r}")
            return
        why = self._cannot_stand()
        if why is not None:
            logger.info(
                "node %r term %d: leadership transfer from %r ignored (%s)", self._self_id, self._term, m.leader_id, why
            )
            return
        logger.info(
            "node %r term %d: leadership transfer from %r, standing at once", self._self_id, self._term, m.leader_id
        )
        self._become_candidate(now, transfer=True)

    def _on_election_timeout(self, now: float) -> None:
        cand = self._cand
        if cand is not None:
            full = not (cand.quick_retry_armed or cand.ready or cand.split_pending)
            if not cand.quick_retry_armed:
                cand.quick_retries = 0  # a full timeout: a new campaign
            cand.quick_retry_armed = False
            if full and self.config.overload_backoff:
                # The round was lost to its timer: back off (docs/specification.md, "Overload").
                self._backoff = min(2 * self._backoff, BACKOFF_CAP)
        why = self._cannot_stand()
        if why is not None:
            # Not enough members to elect anyone, a node being drained, or
            # no term left: wait (and stop standing).
            if cand is not None:
                self._become_follower(now, self._term, None)
            self._election_deadline = now + self._random_timeout()
            self._note_unable(now, why)
            return
        if cand is not None and cand.ready and now >= self._sticky_until:
            # A quorum granted the pre-vote while our own window was open.
            self._become_candidate(now, transfer=False)
            return
        if cand is not None and not cand.pre_phase:
            self.counters.elections_lost += 1
            if cand.split_pending:
                self._leave_split_vote(now)  # the split-vote rule, see _check_split_vote
                return
        self._start_campaign(now)

    def _on_heartbeat_due(self, now: float) -> None:
        lead = self._lead
        assert lead is not None
        if self._let_late_timer_go(now, lead.heartbeat_deadline):
            # This process was stalled, not the cluster: the acknowledgements
            # may be waiting in its input.  Send the round, check next time.
            self.counters.late_timers += 1
            logger.info(
                "node %r term %d: heartbeat timer fired %.3fs late; check-quorum waits for the next round",
                self._self_id,
                self._term,
                now - lead.heartbeat_deadline,
            )
            self._send_heartbeats(now)
            return
        if (
            self.config.check_quorum
            and now - lead.since >= self.config.election_timeout
            and self._recent_acks(lead, now) < self.quorum
        ):
            logger.warning(
                "node %r term %d: no quorum of heartbeat acknowledgements within %.3fs, stepping down",
                self._self_id,
                self._term,
                self.config.election_timeout,
            )
            self.counters.check_quorum_step_downs += 1
            self._become_follower(now, self._term, None)
            return
        self._send_heartbeats(now)

    # ---------------------------------------------------------- transitions

    def _become_follower(self, now: float, term: int, leader_id: NodeId | None) -> None:
        if term > self._term:
            self._term = term
            self._voted_for = None
            self._term_leader = None
        if leader_id is not None:
            self._term_leader = leader_id
        role = self._role
        if role is _LEADER:
            self.counters.step_downs += 1
            logger.info("node %r term %d: stepping down", self._self_id, self._term)
        self._role = _FOLLOWER
        if leader_id != self._leader_id:
            self._named = None
        self._leader_id = leader_id
        self._cand = None
        self._lead = None
        if role is not _FOLLOWER:
            self._election_deadline = now + self._random_timeout()

    def _candidacy(self) -> _Candidacy:
        """Become a candidate: the current candidacy, or a new one for a follower that stands."""
        cand = self._cand
        if cand is None:
            cand = self._cand = _Candidacy()
            self._unable_logged_at = -_NEVER
        self._role = _CANDIDATE
        self._leader_id = None
        self._named = None
        return cand

    def _start_campaign(self, now: float) -> None:
        """Stand for election: pre-vote first when enabled (thesis 9.6)."""
        if not self.config.pre_vote:
            if now < self._sticky_until:
                self._postpone_candidacy(now)
                return
            self._become_candidate(now, transfer=False)
            return
        self._become_pre_candidate(now)

    def _become_pre_candidate(self, now: float) -> None:
        """Ask whether a quorum would vote for this node in ``term + 1``, the term unchanged (thesis 9.6)."""
        cand = self._candidacy()
        cand.new_round(self._self_id, now, pre_phase=True, transfer=False)
        self._election_deadline = now + self._random_timeout()
        self.counters.pre_votes_started += 1
        logger.debug("node %r term %d: asking for pre-votes for term %d", self._self_id, self._term, self._term + 1)
        request = RequestVote(self._term + 1, self._self_id, pre_vote=True)  # one immutable message for all
        self._sends.extend([(peer, request) for peer in self._peers])
        self._check_votes(now)

    def _become_candidate(self, now: float, *, transfer: bool) -> None:
        """Raise the term, vote for self and ask for votes (paper 5.2)."""
        cand = self._candidacy()
        cand.new_round(self._self_id, now, pre_phase=False, transfer=transfer)
        self._term += 1
        self._term_leader = None
        self._voted_for = self._self_id
        self._election_deadline = now + self._random_timeout()
        self.counters.elections_started += 1
        logger.info(
            "node %r term %d: standing for election%s", self._self_id, self._term, " (transfer)" if transfer else ""
        )
        request = RequestVote(self._term, self._self_id, transfer=transfer)
        self._sends.extend([(peer, request) for peer in self._peers])
        self._check_votes(now)

    def _check_votes(self, now: float) -> None:
        cand = self._cand
        assert cand is not None
        if len(cand.granted) < self.quorum:
            if cand.pre_phase:
                self._check_pre_vote_refused(cand, now)
            else:
                self._check_split_vote(cand, now)
            return
        if cand.pre_phase:
            if now < self._sticky_until:
                self._postpone_candidacy(now)
                return
            self._become_candidate(now, transfer=False)
        else:
            self._become_leader(now)

    def _postpone_candidacy(self, now: float) -> None:
        """Leader stickiness covers this node's own vote too: it votes for nobody, itself included.

        A node that heard a leader less than ``T`` ago refuses every vote so
        that the leader's lease cannot be cut short (thesis 6.4.1); its own
        vote counts toward a quorum just like the others.  The election
        timer fires no earlier than that, so this only matters when a node
        stands early (its leader removed from its view): it stands for real
        when the stickiness ends.  A transfer (``TimeoutNow``) never waits:
        the leader gave its lease up.
        """
        logger.debug(
            "node %r term %d: a leader was heard less than T ago, standing at %.3f",
            self._self_id,
            self._term,
            self._sticky_until,
        )
        self._election_deadline = self._sticky_until
        cand = self._cand
        if cand is not None and cand.pre_phase:
            cand.ready = True

    def _check_pre_vote_refused(self, cand: _Candidacy, now: float) -> None:
        """Retry a pre-vote round soon when still-sticky voters refused it.

        A follower's election timer runs from the last heartbeat *it*
        received; its peers received that heartbeat a little later (network
        jitter), so the first node to time out often finds a quorum still in
        its stickiness window (``T`` after *their* last heartbeat) and is
        refused.  A pre-vote refused at our own term can only mean that: a
        voter at a higher term would have refused with that term.  Their
        windows end within about one network delay of ours, so instead of a
        full ``[T, T_max]`` timeout the node asks again after the time the
        round took (one round trip), at most three times per campaign.

        Safe: a pre-vote changes nothing on the receiver, and voters keep
        refusing while they are sticky, so timing here affects liveness only.
        """
        members = max(self.cluster_size, self.config.min_nodes)
        if members - len(cand.refused) >= self.quorum or cand.quick_retries >= 3:
            return  # the round can still be won, or enough quick retries
        cand.quick_retries += 1
        cand.quick_retry_armed = True
        delay = max(now - cand.round_started_at, self.config.election_timeout / 100)
        self._election_deadline = min(self._election_deadline, now + delay)

    def _check_split_vote(self, cand: _Candidacy, now: float) -> None:
        """Leave a split vote within about one round trip instead of a fresh timeout (with pre-vote only).

        Once a quorum has answered a real round without electing this node,
        the voters that refused voted for a rival in this term and will not
        change their vote.  If even a grant from every node yet to answer
        could not make a quorum, the round is clearly lost: leave it at once.
        Otherwise the missing answers may still elect us, so wait once to
        twice as long as the round has taken so far (about one round trip)
        for them; if no win by then, the round is lost (the silent nodes are
        probably down).
        Leaving a lost round: a candidate that saw a rival with a lower id
        stand during this candidacy steps back (follower of the same term,
        fresh timer); the others stand again at once, through a pre-vote
        round.  So the retry, usually by the lowest id, meets no rival, and
        the cluster does not wait out a fresh ``[T, T_max]`` timeout per split.

        Without pre-vote the rule is off: standing again at once would raise
        the term before the next election timeout, which the Raft paper's
        candidate does not do (etcd raft's ``TestLeaderElectionInOneRoundRPC``:
        a candidate refused by a majority stays in its term).

        Why this is safe: safety never depends on timing, only liveness does.
        Stepping back keeps ``term`` and ``voted_for``; standing again goes
        through the normal campaign (pre-vote, then a new term, one vote per
        term).  No vote is cast or counted differently, so one leader per
        term and one vote per term hold whatever the timing.  The lease is
        not cut short either: this node became a candidate when its election
        timer fired, at least ``T`` after the last heartbeat it accepted
        (accepting one would have made it a follower), so its own vote
        cannot help end another leader's lease early; voters still refuse
        while they are sticky.  Transfer rounds are left to their timer.
        """
        config = self.config
        if (
            not config.split_vote_retry
            or not config.pre_vote
            or cand.transfer
            or len(cand.granted) + len(cand.refused) < self.quorum
        ):
            return
        members = max(self.cluster_size, config.min_nodes)
        if members - len(cand.refused) < self.quorum:
            self.counters.elections_lost += 1
            self._leave_split_vote(now)
        elif not cand.split_pending:
            cand.split_pending = True
            # Randomized (once to twice that long) so that two candidates
            # do not give up at the same instant.
            wait = max(now - cand.round_started_at, config.election_timeout / 100)
            self._election_deadline = min(self._election_deadline, now + wait * self._rng.uniform(1.0, 2.0))

    def _leave_split_vote(self, now: float) -> None:
        """Step back if a lower id stood against us, else stand again at once (``_check_split_vote``)."""
        cand = self._cand
        assert cand is not None
        mine = _rank(self._self_id)
        if any(_rank(rival) < mine for rival in cand.rivals) or self._cannot_stand() is not None:
            logger.info("node %r term %d: split vote, stepping back", self._self_id, self._term)
            self._become_follower(now, self._term, None)
        else:
            logger.info("node %r term %d: split vote, standing again", self._self_id, self._term)
            self._start_campaign(now)

    def _become_leader(self, now: float) -> None:
        cand = self._cand
        assert cand is not None
        self._role = _LEADER
        self._leader_id = self._term_leader = self._self_id
        self._lead = _Leadership(now, voters=cand.granted)
        self._cand = None
        self._named = None
        self._backoff = 1
        if self._held:
            self._refuse_held()
        self.counters.elections_won += 1
        logger.info("node %r term %d: won the election, now leader", self._self_id, self._term)
        # A new leader announces itself at once (paper 5.2).
        self._send_heartbeats(now)

    def _send_heartbeats(self, now: float) -> None:
        lead = self._lead
        assert lead is not None
        lead.seq += 1
        lead.sent_at[lead.seq] = now
        horizon = now - self.config.election_timeout
        for seq in [s for s, at in lead.sent_at.items() if at < horizon]:
            del lead.sent_at[seq]
        lead.heartbeat_deadline = now + self.config.heartbeat_interval
        successor = self._pick_successor(lead) if self.config.successor else None
        heartbeat = _new_heartbeat(self._term, self._self_id, lead.seq, successor)
        sends = self._sends
        for peer in self._peers:
            sends.append((peer, heartbeat))
        self._update_lease()

    def _pick_successor(self, lead: _Leadership) -> NodeId | None:
        """The peer to name in the round being sent (docs/specification.md, "Designated successor").

        Kept while it acknowledges every round, so that followers agree on
        it; otherwise the peer that acknowledged the newest round, the
        fastest first (its acknowledgement arrived earliest), then one that
        voted for this leader, then the first in the view; never a peer
        whose connection closed since it last acknowledged.  Deterministic:
        it depends only on what the leader received and when.
        """
        current = lead.successor
        acked_seq = lead.acked_seq
        if current is not None and current in self._peers and acked_seq.get(current, 0) >= lead.seq - 1:
            return current
        best: NodeId | None = None
        best_key = (-1, -_NEVER, False)
        last_ack_at = lead.last_ack_at
        gone = lead.gone
        for peer in self._peers:
            if gone and peer in gone:
                continue
            key = (acked_seq.get(peer, 0), -last_ack_at.get(peer, _NEVER), peer in lead.voters)
            if best is None or key > best_key:
                best, best_key = peer, key
        lead.successor = best
        return best

    def _send_timeout_now(self, target: NodeId, now: float) -> None:
        lead = self._lead
        assert lead is not None
        # Giving the lease up before the target can win despite stickiness
        # keeps "at most one lease" true (thesis 3.10, 6.4.1).
        lead.lease_given_up = True
        lead.lease_expires_at = -_NEVER
        lead.transfer_target = target
        lead.transfer_tried[target] = None
        self.counters.transfers_started += 1
        logger.info("node %r term %d: handing leadership to %r", self._self_id, self._term, target)
        self._sends.append((target, TimeoutNow(self._term, self._self_id)))

    # -------------------------------------------------------------- helpers

    def _random_timeout(self) -> float:
        low = self.config.election_timeout
        high = self.config.election_timeout_max
        # random.uniform(low, high) spelt out (its exact formula, so the same
        # seed gives the same draws): one Python call less on the hot path.
        # Under overload the range is widened by the backoff factor.
        return low if high <= low else low + (high - low) * self._backoff * self._rng.random()

    def _let_late_timer_go(self, now: float, deadline: float) -> bool:
        """Whether a timer firing at *now* for *deadline* is let go, once (``Config.overload_backoff``).

        A timer that fires more than ``T / 2`` after its deadline says that
        this process, not the cluster, was slow: the heartbeats and answers
        that would have kept it quiet may be waiting in its input.  The
        first such firing is let go (the caller re-arms or skips its check);
        the next one acts even if late again, so a process that always lags
        still elects (docs/specification.md, "Overload").
        """
        if not self.config.overload_backoff or now - deadline <= self.config.election_timeout / 2:
            self._late_skipped = False
            return False
        if self._late_skipped:
            self._late_skipped = False
            return False
        self._late_skipped = True
        return True

    def _stand_down_late(self, now: float) -> None:
        """An election timer fired more than ``T / 2`` late: re-arm instead of standing (``_let_late_timer_go``)."""
        self.counters.late_timers += 1
        logger.info(
            "node %r term %d: election timer fired %.3fs late (this process was stalled); re-arming instead of standing",
            self._self_id,
            self._term,
            now - self._election_deadline,
        )
        if self._role is _CANDIDATE:
            self._become_follower(now, self._term, None)  # draws a fresh timeout
        else:
            self._election_deadline = now + self._random_timeout()

    def _arm_transfer_retry(self, lead: _Leadership, now: float) -> None:
        """Set when to hand over to the next-best peer if this transfer has not completed (thesis 3.10).

        The target stands at once and its vote request reaches this leader
        one round trip after ``TimeoutNow`` left, which ends this
        leadership.  If that has not happened within
        ``TRANSFER_RETRY_ROUND_TRIPS`` round trips (the slowest heartbeat
        round trip of the peers heard within ``T``; at least ``T / 50``),
        the target is taken for gone.  No retry is set past the transfer
        deadline, which stays where the first request put it.
        """
        config = self.config
        horizon = now - config.election_timeout
        rtt = 0.0
        sent_at = lead.sent_at
        for peer, at in lead.last_ack_at.items():
            sent = sent_at.get(lead.acked_seq.get(peer, 0))
            if at > horizon and sent is not None:
                rtt = max(rtt, at - sent)
        delay = max(TRANSFER_RETRY_ROUND_TRIPS * rtt, config.election_timeout / 50)
        retry_at = now + delay
        lead.transfer_retry_at = retry_at if retry_at < lead.transfer_deadline else _NEVER

    def _retry_transfer(self, lead: _Leadership, now: float) -> None:
        """The transfer target did not stand in time: send ``TimeoutNow`` to the next-best peer (``_arm_transfer_retry``).

        The next-best peer is the one that acknowledged most recently among
        those heard within ``T`` and not tried yet in this term.  The lease
        stays given up; the transfer deadline does not move.
        """
        target = self._best_transfer_target(
            lead, exclude=lead.transfer_tried, horizon=now - self.config.election_timeout
        )
        if target is None:
            lead.transfer_retry_at = _NEVER
            return
        self.counters.transfer_retries += 1
        logger.info(
            "node %r term %d: leadership transfer to %r did not complete, handing over to %r instead",
            self._self_id,
            self._term,
            lead.transfer_target,
            target,
        )
        self._send_timeout_now(target, now)
        self._arm_transfer_retry(lead, now)

    def _sticky(self, now: float) -> bool:
        return self._role is _LEADER or now < self._sticky_until

    def _cannot_stand(self) -> str | None:
        """Why this node may not stand for election now, or ``None`` when it may."""
        if self._candidacy_paused:
            return _PAUSED
        if len(self._peers) + 1 < self.config.min_nodes:
            return _TOO_FEW
        if self._term >= MAX_TERM:
            return _NO_TERM_LEFT
        return None

    def _note_unable(self, now: float, why: str) -> None:
        """Say why this node cannot stand: when it first finds out, then at most every 30 s while it lasts."""
        if why is _PAUSED or now - self._unable_logged_at < _UNABLE_LOG_INTERVAL:
            return
        self._unable_logged_at = now
        if why is _TOO_FEW:
            logger.info(
                "node %r term %d: waiting for %d members, have %d",
                self._self_id,
                self._term,
                self.config.min_nodes,
                self.cluster_size,
            )
        else:
            logger.error(
                "node %r term %d: cannot stand for election, the term has reached MAX_TERM; "
                "see docs/specification.md, 'Terms have no dead end'",
                self._self_id,
                self._term,
            )

    def _recent_acks(self, lead: _Leadership, now: float) -> int:
        horizon = now - self.config.election_timeout
        last_ack_at = lead.last_ack_at
        return 1 + sum(1 for p in self._peers if last_ack_at.get(p, -_NEVER) > horizon)

    def _update_lease(self) -> None:
        lead = self._lead
        if lead is None or lead.lease_given_up:
            return
        # The newest round that a quorum (this node included) acknowledged.
        acked_seq = lead.acked_seq
        acked = [acked_seq.get(p, 0) for p in self._peers]
        acked.sort(reverse=True)
        acked.insert(0, lead.seq)
        quorum = self.quorum
        if len(acked) < quorum:
            return
        sent = lead.sent_at.get(acked[quorum - 1])
        if sent is not None:
            lead.lease_expires_at = max(lead.lease_expires_at, sent + self.config.lease_duration)

    def _best_transfer_target(
        self, lead: _Leadership, *, exclude: dict[NodeId, None] | None = None, horizon: float = -_NEVER
    ) -> NodeId | None:
        # The peer that acknowledged most recently; right after a win, before
        # any acknowledgement, a peer that voted for this node (else any peer),
        # so that a pause or a shutdown just after winning still hands over.
        # A peer whose connection closed since it last acknowledged is
        # skipped; a retry (``_retry_transfer``) also skips the peers tried
        # and those not heard since *horizon*.
        best: NodeId | None = None
        best_key = (-_NEVER, False)
        for peer in self._peers:
            if (exclude and peer in exclude) or (lead.gone and peer in lead.gone):
                continue
            if horizon > -_NEVER and lead.last_ack_at.get(peer, -_NEVER) <= horizon:
                continue
            key = (lead.last_ack_at.get(peer, -_NEVER), peer in lead.voters)
            if best is None or key > best_key:
                best, best_key = peer, key
        return best

    def _drop(self, message: Message, why: str) -> None:
        """Bad input: log it and count it; the caller changes nothing else (docs/specification.md, "bad input")."""
        kind = type(message).__name__
        count = self.counters.messages_rejected = self.counters.messages_rejected + 1
        self.counters.rejected_by_kind[kind] = self.counters.rejected_by_kind.get(kind, 0) + 1
        if worth_logging(count):
            logger.warning(
                "node %r term %d: dropped %r: %s (%d dropped)", self._self_id, self._term, message, why, count
            )

    def _reject_control(self, kind: str, why: str) -> Output:
        count = self.counters.messages_rejected = self.counters.messages_rejected + 1
        self.counters.rejected_by_kind[kind] = self.counters.rejected_by_kind.get(kind, 0) + 1
        if worth_logging(count):
            logger.warning("node %r term %d: %s, ignored (%d dropped)", self._self_id, self._term, why, count)
        return self._flush()

    def _flush(self) -> Output:
        # This runs once per input: the common case (nothing to save, no
        # event, at most a reply) takes the fewest steps.
        persist: HardState | None = None
        persisted = self._persisted
        if self._term != persisted.term or self._voted_for != persisted.voted_for:
            persist = self._persisted = _new_hard_state(self._term, self._voted_for)
        # Emit when the leader view changes in a way a user cares about: a new
        # leader is known, or no leader is known any more.
        emitted = self._emitted
        if self._term != emitted[0] or self._leader_id != emitted[1]:
            view = (self._term, self._leader_id)
            if view[1] is not None or emitted[1] is not None:
                self._events.append(LeaderChanged(*view))
            self._emitted = view
        sends = self._sends
        events = self._events
        out = _new_output(
            persist,
            tuple(sends) if sends else (),
            tuple(events) if events else (),
            self.next_deadline,
        )
        if sends:
            sends.clear()
        if events:
            events.clear()
        return out
