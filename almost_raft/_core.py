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

Rules, each with the reason:

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
  ``transfer=True``, which voters honour despite stickiness.  The old leader
  gives up its lease at once, for the rest of its term (thesis 3.10).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Final, TypeVar, final

from ._messages import (
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


def _rank(node_id: NodeId) -> tuple[int, int, str]:
    """A total order over node ids (ints before strs), for the split-vote rule."""
    return (0, node_id, "") if isinstance(node_id, int) else (1, 0, node_id)


@final
@dataclass(frozen=True, slots=True)
class Config:
    """The checked configuration of one node's election (see ``RaftElectionState.init``).

    Attributes:
        self_id: this node's id.
        election_timeout: ``T``, the lower end of the election timeout.
        election_timeout_max: the upper end; each round draws from ``[T, max]``.
        heartbeat_interval: time between two heartbeat rounds of a leader.
        min_nodes: no election while the cluster (self included) is smaller.
        max_nodes: the cluster (self included) never grows beyond this.
        pre_vote: ask for pre-votes before raising the term.
        check_quorum: a leader without a quorum of acknowledgements within
            ``T`` steps down.
        lease_duration: how long a lease lasts from the send time of the
            acknowledged round: ``T`` shortened by the clock-drift margin.
        split_vote_retry: leave a split vote fast: a candidate whose round a
            quorum answered without electing it steps back when a rival with
            a lower id stood in the same round, and otherwise stands again
            at once instead of waiting out a fresh timeout.
    """

    self_id: NodeId
    election_timeout: float
    election_timeout_max: float
    heartbeat_interval: float
    min_nodes: int = 1
    max_nodes: int = 1024
    pre_vote: bool = True
    check_quorum: bool = True
    lease_duration: float = 0.0
    split_vote_retry: bool = True


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
_new_heartbeat_response = _trusted(HeartbeatResponse)
_new_vote_response = _trusted(VoteResponse)
_new_hard_state = _trusted(HardState)


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
    messages_rejected: int = 0
    rejected_by_kind: dict[str, int] = field(default_factory=dict)


@final
class Election:
    """One node's election state machine.

    Args:
        config: the checked configuration.
        peers: the ids of the peers known at start (not ``self_id``).
        hard_state: the state loaded from storage, or ``None`` for a new node.
        rng: the only source of randomness.
        now: the current time; the node refuses votes until ``now + T``.
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
        self.config = config
        self.counters = CoreCounters()
        self._rng = rng
        self._self_id = config.self_id
        # A dict, not a set: iteration order must not depend on hash seeds,
        # or the same seed would not replay the same run.
        self._peers: dict[NodeId, None] = dict.fromkeys(peers)
        hs = hard_state or HardState(0, None)
        self._term = hs.term
        self._voted_for = hs.voted_for
        self._persisted = hs
        self._role = Role.FOLLOWER
        self._leader_id: NodeId | None = None
        # Who won the current term as far as this node knows.  Unlike
        # _leader_id it outlives losing touch within the term (timeout,
        # check-quorum step-down), so a second node claiming the same term is
        # still recognised as nonsense (paper 5.2: one leader per term).
        self._term_leader: NodeId | None = None
        self._emitted: tuple[int, NodeId | None] = (self._term, None)
        self._started_at = now
        # A node that has just started behaves as if it had just heard from a
        # leader: a restart must not cut another node's lease short.
        self._sticky_until = now + config.election_timeout
        self._last_leader_contact = -_NEVER
        self._candidacy_paused = False
        # Quick pre-vote retries after refusals by still-sticky voters (see
        # _check_pre_vote_refused): when the round began, how many quick
        # retries this campaign made, and whether the pending timer is one.
        self._round_started_at = now
        self._quick_retries = 0
        self._quick_retry_armed = False
        self._election_deadline = now + self._random_timeout()
        # candidate state
        self._pre_phase = False
        self._transfer_round = False
        self._granted: dict[NodeId, None] = {}
        self._refused: dict[NodeId, None] = {}
        # Candidates seen standing in our own round since we last heard a
        # leader (the split-vote rule in _check_split_vote).
        self._rivals: dict[NodeId, None] = {}
        self._vote_round_started_at = now
        self._split_pending = False
        # leader state
        self._heartbeat_deadline = _NEVER
        self._transfer_deadline = _NEVER
        self._leader_since = -_NEVER
        self._seq = 0
        self._sent_at: dict[int, float] = {}
        self._acked_seq: dict[NodeId, int] = {}
        self._last_ack_at: dict[NodeId, float] = {}
        self._lease_expires_at = -_NEVER
        self._lease_given_up = False
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
        return self._role is Role.CANDIDATE and self._pre_phase

    @property
    def next_deadline(self) -> float:
        """When ``tick`` has something to do next (``inf`` once terminated)."""
        if self._role is _LEADER:
            return min(self._heartbeat_deadline, self._transfer_deadline)
        if self._role is _TERMINATED:
            return _NEVER
        return self._election_deadline

    @property
    def lease_expires_at(self) -> float:
        """When the current lease ends (``-inf`` when this node holds none)."""
        if self._role is not Role.LEADER:
            return -_NEVER
        return self._lease_expires_at

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
        if self._role is Role.TERMINATED or paused == self._candidacy_paused:
            return self._flush()
        self._candidacy_paused = paused
        logger.info("node %r term %d: candidacy %s", self._self_id, self._term, "paused" if paused else "resumed")
        if paused and self._role is Role.LEADER:
            return self.transfer_leadership(None, now)
        if paused and self._role is Role.CANDIDATE:
            self._become_follower(now, self._term, None)
        return self._flush()

    def holds_lease(self, now: float) -> bool:
        """Whether this node leads under a valid lease at *now*."""
        return self._role is Role.LEADER and now < self._lease_expires_at

    def last_ack_at(self, node_id: NodeId) -> float | None:
        """When the leader last heard a heartbeat acknowledgement from *node_id*."""
        return self._last_ack_at.get(node_id)

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

        A message from an unknown node or from this node itself is dropped,
        logged and counted in ``counters.messages_rejected``; it changes
        nothing.
        """
        if self._role is _TERMINATED:
            return self._flush()
        sender = message.sender
        if sender == self._self_id or sender not in self._peers:
            why = "from this node itself" if sender == self._self_id else "from an unknown node"
            return self._reject(message, why)
        # The steady state's two messages first: each case is an isinstance test.
        match message:
            case Heartbeat():
                self._on_heartbeat(message, now)
            case HeartbeatResponse():
                self._on_heartbeat_response(message, now)
            case RequestVote():
                self._on_request_vote(message, now)
            case VoteResponse():
                self._on_vote_response(message, now)
            case TimeoutNow():
                self._on_timeout_now(message, now)
            case _:
                assert_never(message)
        return self._flush()

    def tick(self, now: float) -> Output:
        """Fire whatever timer is due at *now*; before ``next_deadline`` it does nothing."""
        match self._role:
            case Role.FOLLOWER | Role.CANDIDATE:
                if now >= self._election_deadline:
                    self._on_election_timeout(now)
            case Role.LEADER:
                if now >= self._transfer_deadline:
                    logger.info(
                        "node %r term %d: leadership transfer did not complete within %.3fs, stepping down",
                        self._self_id,
                        self._term,
                        self.config.election_timeout,
                    )
                    self._become_follower(now, self._term, None)
                elif now >= self._heartbeat_deadline:
                    self._on_heartbeat_due(now)
            case Role.TERMINATED:
                pass
            case _:
                assert_never(self._role)
        return self._flush()

    def add_peer(self, node_id: NodeId, now: float) -> Output:
        """Add *node_id* to this node's view (``AddNode``); a known id changes nothing."""
        if self._role is Role.TERMINATED or node_id in self._peers:
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
        if self._role is Role.LEADER:
            # Tell the newcomer who leads without waiting for the next round.
            self._sends.append((node_id, Heartbeat(self._term, self._self_id, self._seq)))
        return self._flush()

    def remove_peer(self, node_id: NodeId, now: float) -> Output:
        """Remove *node_id* from this node's view (``RemoveNode``).

        Removing this node's own id is ``shutdown``.  Removing the leader makes
        this node stand for election at once instead of waiting out its timeout
        (it asks for pre-votes at once; it votes for itself only once its
        leader stickiness has run out, see ``_postpone_candidacy``).
        """
        if self._role is Role.TERMINATED:
            return self._flush()
        if node_id == self._self_id:
            return self.shutdown(now)
        if node_id not in self._peers:
            return self._reject_control("RemoveNode", f"RemoveNode({node_id!r}) names an unknown node")
        del self._peers[node_id]
        self._granted.pop(node_id, None)
        self._refused.pop(node_id, None)
        self._acked_seq.pop(node_id, None)
        self._last_ack_at.pop(node_id, None)
        logger.info(
            "node %r term %d: removed peer %r (cluster size %d)", self._self_id, self._term, node_id, self.cluster_size
        )
        if self._role is Role.CANDIDATE:
            if self.cluster_size < self.config.min_nodes:
                self._become_follower(now, self._term, None)
            else:
                self._check_votes(now)
        elif self._role is Role.FOLLOWER and self._leader_id == node_id:
            # The leader left this node's view, but it was heard: stickiness
            # stays, or a lease this node acknowledged could be cut short
            # (the leader, which may not know it was removed, still relies on
            # it).  Found by the simulator: tests/simulation/test_regressions.py.
            self._leader_id = None
            if self.cluster_size >= self.config.min_nodes and not self._candidacy_paused:
                self._start_campaign(now)
        elif self._role is Role.LEADER:
            self._update_lease()
        return self._flush()

    def transfer_leadership(self, target_id: NodeId | None, now: float) -> Output:
        """Hand leadership to *target_id* (``None``: the most recently acknowledging peer).

        Changes nothing on a non-leader, or when the target is unknown or this node.
        """
        if self._role is not Role.LEADER:
            logger.info("node %r term %d: TransferLeadership ignored, not the leader", self._self_id, self._term)
            return self._flush()
        if target_id is None:
            target_id = self._best_transfer_target()
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
        self._transfer_deadline = now + self.config.election_timeout
        return self._flush()

    def shutdown(self, now: float) -> Output:
        """End this node's election; a leader first hands over with ``TimeoutNow``."""
        if self._role is Role.TERMINATED:
            return self._flush()
        if self._role is Role.LEADER:
            target = self._best_transfer_target()
            if target is not None:
                self._send_timeout_now(target, now)
            self.counters.step_downs += 1
        logger.info("node %r term %d: election terminated", self._self_id, self._term)
        self._role = Role.TERMINATED
        self._leader_id = None
        self._lease_expires_at = -_NEVER
        return self._flush()

    # ------------------------------------------------------------- handlers

    def _on_request_vote(self, m: RequestVote, now: float) -> None:
        if m.term < self._term or (m.pre_vote and m.term == self._term):
            # A stale candidate: refuse with our term so that it catches up
            # (paper 5.1: "if a server receives a request with a stale term
            # number, it rejects the request").
            self._answer_vote(m, granted=False)
            return
        if not m.transfer and self._sticky(now):
            # Leader stickiness (thesis 4.2.3): the request changes nothing,
            # not even our term, so a returning node cannot depose a leader.
            logger.debug(
                "node %r term %d: refused %s from %r for term %d, a leader was heard less than T ago",
                self._self_id,
                self._term,
                "pre-vote" if m.pre_vote else "vote",
                m.candidate_id,
                m.term,
            )
            self._answer_vote(m, granted=False)
            return
        if m.pre_vote:
            # m.term > self._term here; a pre-vote is a question and changes nothing (thesis 9.6).
            self._answer_vote(m, granted=True)
            return
        if m.term > self._term:
            self._become_follower(now, m.term, None)
        # Now m.term == self._term.  One vote per term (paper 5.2); a node that
        # knows this term's leader votes for no one else.
        can_vote = self._voted_for == m.candidate_id or (self._voted_for is None and self._leader_id is None)
        if can_vote:
            self._voted_for = m.candidate_id
            # Granting a vote resets the election timer (paper 5.2, Figure 2).
            self._election_deadline = now + self._random_timeout()
        elif self._role is _CANDIDATE and not self._pre_phase:
            # A rival stands in our round: remembered for _check_split_vote.
            self._rivals[m.candidate_id] = None
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
        if m.pre_vote:
            if not m.granted and m.term > self._term:
                # A refused pre-vote names the voter's real term.
                self._become_follower(now, m.term, None)
                return
            if self._role is not _CANDIDATE or not self._pre_phase:
                return  # stale answer to an earlier round
            # A grant names the term we would stand in; a refusal the voter's
            # own term, which equals ours here (a higher one was handled above).
            if m.term != (self._term + 1 if m.granted else self._term):
                return
        else:
            if m.term > self._term:
                self._become_follower(now, m.term, None)
                return
            if self._role is not _CANDIDATE or self._pre_phase or m.term != self._term:
                return
        # Votes are counted by distinct voter id: a duplicated answer counts once.
        if m.granted:
            self._granted[m.voter_id] = None
            self._refused.pop(m.voter_id, None)
        elif m.voter_id not in self._granted:
            self._refused[m.voter_id] = None
        self._check_votes(now)

    def _on_heartbeat(self, m: Heartbeat, now: float) -> None:
        if m.term < self._term:
            # A stale leader: tell it the newer term, and do not reset our
            # timer (paper 5.1).
            self._sends.append((m.leader_id, _new_heartbeat_response(self._term, self._self_id, False, m.seq)))
            return
        if m.term == self._term and self._role is _LEADER:
            # Two leaders in one term cannot happen while the rules hold.
            self._reject(m, f"claims leadership of term {m.term}, which this node leads")
            return
        if m.term == self._term and self._term_leader is not None and self._term_leader != m.leader_id:
            self._reject(m, f"claims leadership of term {m.term}, led by {self._term_leader!r}")
            return
        if self._role is not _FOLLOWER or m.term != self._term or self._leader_id != m.leader_id:
            # (A follower hearing its known leader again, the common case,
            # is one already: _become_follower would change nothing.)
            self._become_follower(now, m.term, m.leader_id)
        self._last_leader_contact = now
        if self._rivals:
            self._rivals = {}
        self._sticky_until = now + self.config.election_timeout
        self._election_deadline = now + self._random_timeout()
        self._sends.append((m.leader_id, _new_heartbeat_response(self._term, self._self_id, True, m.seq)))

    def _on_heartbeat_response(self, m: HeartbeatResponse, now: float) -> None:
        if m.term > self._term:
            # A stale leader learns of the newer term and steps down (paper 5.1).
            self._become_follower(now, m.term, None)
            return
        if self._role is not _LEADER or m.term != self._term or not m.success:
            return
        if m.seq > self._seq:
            self._reject(m, f"acknowledges round {m.seq}, which was never sent (last {self._seq})")
            return
        if m.seq > self._acked_seq.get(m.follower_id, 0):
            self._acked_seq[m.follower_id] = m.seq
        self._last_ack_at[m.follower_id] = now
        self._update_lease()

    def _on_timeout_now(self, m: TimeoutNow, now: float) -> None:
        if m.term < self._term:
            return  # stale transfer of an earlier term
        if m.term == self._term and self._term_leader is not None and self._term_leader != m.leader_id:
            self._reject(m, f"sent by {m.leader_id!r}, but term {m.term} is led by {self._term_leader!r}")
            return
        if m.term > self._term:
            self._become_follower(now, m.term, m.leader_id)
        if self.cluster_size < self.config.min_nodes or self._candidacy_paused:
            logger.info(
                "node %r term %d: leadership transfer from %r ignored (%s)",
                self._self_id,
                self._term,
                m.leader_id,
                "candidacy paused" if self._candidacy_paused else "cluster below min_nodes",
            )
            return
        logger.info(
            "node %r term %d: leadership transfer from %r, standing at once", self._self_id, self._term, m.leader_id
        )
        self._become_candidate(now, transfer=True)

    def _on_election_timeout(self, now: float) -> None:
        if not self._quick_retry_armed:
            self._quick_retries = 0  # a full timeout: a new campaign
        self._quick_retry_armed = False
        if self.cluster_size < self.config.min_nodes or self._candidacy_paused:
            # Not enough members to elect anyone, or a node being drained:
            # wait (and stop standing).
            if self._role is Role.CANDIDATE:
                self._become_follower(now, self._term, None)
            self._election_deadline = now + self._random_timeout()
            return
        if self._role is Role.CANDIDATE and not self._pre_phase:
            self.counters.elections_lost += 1
            if self._split_pending:
                self._leave_split_vote(now)  # the split-vote rule, see _check_split_vote
                return
        self._start_campaign(now)

    def _on_heartbeat_due(self, now: float) -> None:
        if (
            self.config.check_quorum
            and now - self._leader_since >= self.config.election_timeout
            and self._recent_acks(now) < self.quorum
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
        if self._role is _LEADER:
            self.counters.step_downs += 1
            logger.info("node %r term %d: stepping down", self._self_id, self._term)
        was_follower = self._role is _FOLLOWER
        self._split_pending = False
        self._role = _FOLLOWER
        self._leader_id = leader_id
        self._pre_phase = False
        self._transfer_round = False
        self._heartbeat_deadline = _NEVER
        self._transfer_deadline = _NEVER
        self._lease_expires_at = -_NEVER
        if not was_follower:
            self._election_deadline = now + self._random_timeout()

    def _start_campaign(self, now: float) -> None:
        """Stand for election: pre-vote first when enabled (thesis 9.6)."""
        if not self.config.pre_vote:
            if now < self._sticky_until:
                self._postpone_candidacy(now)
                return
            self._become_candidate(now, transfer=False)
            return
        self._role = Role.CANDIDATE
        self._pre_phase = True
        self._transfer_round = False
        self._leader_id = None
        self._granted = {self._self_id: None}
        self._refused = {}
        self._round_started_at = now
        self._split_pending = False
        self._election_deadline = now + self._random_timeout()
        self.counters.pre_votes_started += 1
        logger.debug("node %r term %d: asking for pre-votes for term %d", self._self_id, self._term, self._term + 1)
        for peer in self._peers:
            self._sends.append((peer, RequestVote(self._term + 1, self._self_id, pre_vote=True)))
        self._check_votes(now)

    def _become_candidate(self, now: float, *, transfer: bool) -> None:
        """Raise the term, vote for self and ask for votes (paper 5.2)."""
        self._role = Role.CANDIDATE
        self._pre_phase = False
        self._transfer_round = transfer
        self._term += 1
        self._term_leader = None
        self._voted_for = self._self_id
        self._leader_id = None
        self._granted = {self._self_id: None}
        self._refused = {}
        self._vote_round_started_at = now
        self._split_pending = False
        self._election_deadline = now + self._random_timeout()
        self.counters.elections_started += 1
        logger.info(
            "node %r term %d: standing for election%s", self._self_id, self._term, " (transfer)" if transfer else ""
        )
        for peer in self._peers:
            self._sends.append((peer, RequestVote(self._term, self._self_id, transfer=transfer)))
        self._check_votes(now)

    def _check_votes(self, now: float) -> None:
        if self._role is not Role.CANDIDATE:
            return
        if len(self._granted) < self.quorum:
            if self._pre_phase:
                self._check_pre_vote_refused(now)
            else:
                self._check_split_vote(now)
            return
        if self._pre_phase:
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
            "node %r term %d: a leader was heard less than T ago, standing at %.3f", self._self_id, self._term, now
        )
        self._election_deadline = self._sticky_until

    def _check_pre_vote_refused(self, now: float) -> None:
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
        if members - len(self._refused) >= self.quorum or self._quick_retries >= 3:
            return  # the round can still be won, or enough quick retries
        self._quick_retries += 1
        self._quick_retry_armed = True
        delay = max(now - self._round_started_at, self.config.election_timeout / 100)
        self._election_deadline = min(self._election_deadline, now + delay)

    def _check_split_vote(self, now: float) -> None:
        """Leave a split vote within about one round trip instead of a fresh timeout.

        Once a quorum has answered a real round without electing this node,
        the voters that refused voted for a rival in this term and will not
        change their vote.  If even a grant from every node yet to answer
        could not make a quorum, the round is clearly lost: leave it at once.
        Otherwise the missing answers may still elect us, so wait once to
        twice as long as the round has taken so far (about one round trip)
        for them; if no win by then, the round is lost (the silent nodes are
        probably down).
        Leaving a lost round: a candidate that saw a rival with a lower id
        stand since it last heard a leader steps back (follower of the same
        term, fresh timer); the others stand again at once.  So the retry,
        usually by the lowest id, meets no rival, and the cluster does not
        wait out a fresh ``[T, T_max]`` timeout per split.

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
        if (
            not self.config.split_vote_retry
            or self._pre_phase
            or self._transfer_round
            or len(self._granted) + len(self._refused) < self.quorum
        ):
            return
        members = max(self.cluster_size, self.config.min_nodes)
        if members - len(self._refused) < self.quorum:
            self.counters.elections_lost += 1
            self._leave_split_vote(now)
        elif not self._split_pending:
            self._split_pending = True
            # Randomized (once to twice that long) so that two candidates
            # do not give up at the same instant.
            wait = max(now - self._vote_round_started_at, self.config.election_timeout / 100)
            self._election_deadline = min(self._election_deadline, now + wait * self._rng.uniform(1.0, 2.0))

    def _leave_split_vote(self, now: float) -> None:
        """Step back if a lower id stood against us, else stand again at once (``_check_split_vote``)."""
        mine = _rank(self._self_id)
        if (
            any(_rank(rival) < mine for rival in self._rivals)
            or self.cluster_size < self.config.min_nodes
            or self._candidacy_paused
        ):
            logger.info("node %r term %d: split vote, stepping back", self._self_id, self._term)
            self._become_follower(now, self._term, None)
        else:
            logger.info("node %r term %d: split vote, standing again", self._self_id, self._term)
            self._start_campaign(now)

    def _become_leader(self, now: float) -> None:
        self._role = Role.LEADER
        self._leader_id = self._term_leader = self._self_id
        self._pre_phase = False
        self._leader_since = now
        self._seq = 0
        self._sent_at = {}
        self._acked_seq = {}
        self._last_ack_at = {}
        self._lease_expires_at = -_NEVER
        self._lease_given_up = False
        self._transfer_deadline = _NEVER
        self.counters.elections_won += 1
        logger.info("node %r term %d: won the election, now leader", self._self_id, self._term)
        # A new leader announces itself at once (paper 5.2).
        self._send_heartbeats(now)

    def _send_heartbeats(self, now: float) -> None:
        self._seq += 1
        self._sent_at[self._seq] = now
        horizon = now - self.config.election_timeout
        for seq in [s for s, at in self._sent_at.items() if at < horizon]:
            del self._sent_at[seq]
        self._heartbeat_deadline = now + self.config.heartbeat_interval
        for peer in self._peers:
            self._sends.append((peer, Heartbeat(self._term, self._self_id, self._seq)))
        self._update_lease()

    def _send_timeout_now(self, target: NodeId, now: float) -> None:
        # Giving the lease up before the target can win despite stickiness
        # keeps "at most one lease" true (thesis 3.10, 6.4.1).
        self._lease_given_up = True
        self._lease_expires_at = -_NEVER
        self.counters.transfers_started += 1
        logger.info("node %r term %d: handing leadership to %r", self._self_id, self._term, target)
        self._sends.append((target, TimeoutNow(self._term, self._self_id)))

    # -------------------------------------------------------------- helpers

    def _random_timeout(self) -> float:
        low = self.config.election_timeout
        high = self.config.election_timeout_max
        # random.uniform(low, high) spelt out (its exact formula, so the same
        # seed gives the same draws): one Python call less on the hot path.
        return low if high <= low else low + (high - low) * self._rng.random()

    def _sticky(self, now: float) -> bool:
        return self._role is _LEADER or now < self._sticky_until

    def _recent_acks(self, now: float) -> int:
        horizon = now - self.config.election_timeout
        return 1 + sum(1 for p in self._peers if self._last_ack_at.get(p, -_NEVER) > horizon)

    def _update_lease(self) -> None:
        if self._role is not _LEADER or self._lease_given_up:
            return
        # The newest round that a quorum (this node included) acknowledged.
        acked_seq = self._acked_seq
        acked = [acked_seq.get(p, 0) for p in self._peers]
        acked.sort(reverse=True)
        acked.insert(0, self._seq)
        quorum = self.quorum
        if len(acked) < quorum:
            return
        sent = self._sent_at.get(acked[quorum - 1])
        if sent is not None:
            self._lease_expires_at = max(self._lease_expires_at, sent + self.config.lease_duration)

    def _best_transfer_target(self) -> NodeId | None:
        # The peer that acknowledged most recently; right after a win, before
        # any acknowledgement, a peer that voted for this node (else any peer),
        # so that a pause or a shutdown just after winning still hands over.
        best: NodeId | None = None
        best_key = (-_NEVER, False)
        for peer in self._peers:
            key = (self._last_ack_at.get(peer, -_NEVER), peer in self._granted)
            if best is None or key > best_key:
                best, best_key = peer, key
        return best

    def _reject(self, message: Message, why: str) -> Output:
        kind = type(message).__name__
        self.counters.messages_rejected += 1
        self.counters.rejected_by_kind[kind] = self.counters.rejected_by_kind.get(kind, 0) + 1
        logger.warning("node %r term %d: dropped %r: %s", self._self_id, self._term, message, why)
        return self._flush()

    def _reject_control(self, kind: str, why: str) -> Output:
        self.counters.messages_rejected += 1
        self.counters.rejected_by_kind[kind] = self.counters.rejected_by_kind.get(kind, 0) + 1
        logger.warning("node %r term %d: %s, ignored", self._self_id, self._term, why)
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
