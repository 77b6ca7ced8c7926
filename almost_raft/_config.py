"""The configuration of one node's election: every check, every default and the lease formula, in one place.

``make_config`` builds the ``Config`` that the core runs with.  Everything
that builds one for real use goes through it: ``RaftElectionState.init``,
``python -m almost_raft`` and the simulator and explorer of
``almost_raft.testing``.  So a default, a check or the length of the lease is
written once, and a configuration that cannot work fails the same way
everywhere, at once, naming the problem.

``check_nodes`` and ``check_storage`` check the objects ``init`` is given
(the application's ``Node`` and ``Storage``), for the same reason: a mistake
found at start costs one clear line, one found at the first vote a traceback.

Defaults follow ``T`` (``election_timeout``):

* ``election_timeout_max``: ``2 * T`` (each round draws from ``[T, 2T)``);
* ``heartbeat_interval``: ``T / 3``, so a follower misses two heartbeats
  before it even could time out (at most ``T / 2`` is allowed);
* ``message_timeout``: the heartbeat interval, so a dead peer holds up its own
  queue for at most one round.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, final

from ._messages import NodeId, check_node_id, check_seconds
from ._protocols import Node, Storage

logger = logging.getLogger("almost_raft")

DEFAULT_ELECTION_TIMEOUT: Final = 0.150
"""``T`` when none is given, in seconds."""

DEFAULT_CLOCK_DRIFT: Final = 0.01
"""The clock-drift bound when none is given (1 %)."""

UNIT_WARNING_SECONDS: Final = 60.0
"""An election timeout above this is almost surely milliseconds written as seconds: warn."""


@final
@dataclass(frozen=True, slots=True)
class Config:
    """The checked configuration of one node's election (build it with ``make_config``).

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
            acknowledged round: ``T * (1 - d) / (1 + d)`` for a clock-drift
            bound ``d`` (see ``lease_duration``).
        split_vote_retry: leave a split vote fast: a candidate whose round a
            quorum answered without electing it steps back when a rival with
            a lower id stood in the same round, and otherwise stands again
            at once (through a pre-vote round) instead of waiting out a fresh
            timeout.  Only with ``pre_vote``: without it a candidate refused
            by a quorum waits for its timer, as in the Raft paper.
        message_timeout: the bound on each ``Node.send_message`` call (used
            by the driver, not by the core); ``None`` in a ``Config`` built
            by hand, without ``make_config``.
        successor: a leader names a designated successor in every heartbeat,
            and a follower named in the last heartbeat it accepted stands
            exactly ``T`` after it instead of after a random timeout
            (docs/specification.md, "Designated successor").  On in
            ``make_config``; off in a ``Config`` built by hand.
        overload_backoff: elections back off under overload: a candidate
            whose round timed out doubles the random part of its next
            timeouts (up to ``BACKOFF_CAP`` times), and a timer that fires
            more than ``T / 2`` late re-arms instead of acting, once
            (docs/specification.md, "Overload").  On in ``make_config``;
            off in a ``Config`` built by hand.
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
    message_timeout: float | None = None
    successor: bool = False
    overload_backoff: bool = False


def lease_duration(election_timeout: float, clock_drift: float) -> float:
    """How long a lease lasts, from the send time of the heartbeat round a quorum acknowledged.

    A voter refuses votes for ``T`` after it receives a heartbeat, by its own
    clock.  If the clocks' rates differ by at most a factor ``1 + d`` from
    true time, the voter's ``T`` lasts at least ``T / (1 + d)`` true seconds,
    and the leader's ``x`` seconds at most ``x / (1 - d)`` true seconds.  The
    leader may therefore count on ``T * (1 - d) / (1 + d)`` of its own
    seconds, from the moment it sent the round (which is before any voter
    received it).  Thesis 6.4.1.

    Args:
        election_timeout: ``T`` in seconds.
        clock_drift: ``d``, the bound on the relative rate difference of two clocks.
    """
    return election_timeout * (1 - clock_drift) / (1 + clock_drift)


def make_config(
    self_id: NodeId,
    *,
    election_timeout: float = DEFAULT_ELECTION_TIMEOUT,
    election_timeout_max: float | None = None,
    heartbeat_interval: float | None = None,
    message_timeout: float | None = None,
    min_nodes: int = 1,
    max_nodes: int = 1024,
    peer_ids: Iterable[NodeId] = (),
    pre_vote: bool = True,
    check_quorum: bool = True,
    split_vote_retry: bool = True,
    clock_drift: float = DEFAULT_CLOCK_DRIFT,
    successor: bool = True,
    overload_backoff: bool = True,
    warn: bool = True,
) -> Config:
    """Check a configuration, fill in the defaults that follow ``T``, and return it as a ``Config``.

    Args:
        self_id: this node's id (``str`` or ``int``).
        election_timeout: ``T`` in seconds.
        election_timeout_max: the top of the timeout range (default ``2 * T``).
        heartbeat_interval: seconds between heartbeats (default ``T / 3``;
            at most ``T / 2``).
        message_timeout: bound in seconds on each send (default: the
            heartbeat interval; at most ``T``).
        min_nodes: no election while the cluster, this node included, is smaller.
        max_nodes: the cluster, this node included, never grows beyond this.
        peer_ids: the ids of the peers known at start.
        pre_vote: ask for pre-votes before raising the term.
        check_quorum: a leader without a quorum of acknowledgements within
            ``T`` steps down.
        split_vote_retry: leave a split vote within a round trip (with pre-vote).
        successor: name a designated successor in heartbeats, and stand
            exactly ``T`` after the last heartbeat when named.
        overload_backoff: back elections off under overload (a lost round
            widens the next timeouts; a timer ``T / 2`` late re-arms once).
        clock_drift: the bound on the relative rate difference of two
            nodes' clocks, in ``[0, 0.5)``; sets the lease length.
        warn: log a warning on the ``almost_raft`` logger for values that
            are almost surely a mistake of unit (an election timeout of more
            than a minute).

    Returns:
        The checked configuration.

    Raises:
        TypeError: a value of the wrong type.
        ValueError: a configuration that cannot work.
    """
    check_node_id(self_id, "self_id")
    timeout = check_seconds("election_timeout", election_timeout)
    if election_timeout_max is None:
        timeout_max = 2 * timeout
    else:
        timeout_max = check_seconds("election_timeout_max", election_timeout_max)
        if timeout_max < timeout:
            raise ValueError(f"election_timeout_max ({timeout_max}) must be >= election_timeout ({timeout})")
    if heartbeat_interval is None:
        heartbeat = timeout / 3
    else:
        heartbeat = check_seconds("heartbeat_interval", heartbeat_interval)
        if heartbeat > timeout / 2:
            raise ValueError(
                f"heartbeat_interval ({heartbeat}) must be at most half the election_timeout ({timeout}): "
                "followers would time out between two heartbeats"
            )
    if message_timeout is None:
        send_timeout = heartbeat
    else:
        send_timeout = check_seconds("message_timeout", message_timeout)
        if send_timeout > timeout:
            raise ValueError(
                f"message_timeout ({send_timeout}) must not exceed the election_timeout ({timeout}): "
                "a message still being sent after T arrives when its receiver has already timed out"
            )
    for name, value in (("max_nodes", max_nodes), ("min_nodes", min_nodes)):
        if type(value) is bool or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1 (it counts this node), got {value}")
    if min_nodes > max_nodes:
        raise ValueError(f"min_nodes ({min_nodes}) must not exceed max_nodes ({max_nodes})")
    for name, flag in (
        ("pre_vote", pre_vote),
        ("check_quorum", check_quorum),
        ("split_vote_retry", split_vote_retry),
        ("successor", successor),
        ("overload_backoff", overload_backoff),
    ):
        if type(flag) is not bool:
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if type(clock_drift) is bool or not isinstance(clock_drift, (int, float)):
        raise TypeError(f"clock_drift must be a number, got {type(clock_drift).__name__}")
    if not (0 <= clock_drift < 0.5) or math.isnan(clock_drift):
        raise ValueError(f"clock_drift must be in [0, 0.5), got {clock_drift!r}")
    seen: set[NodeId] = set()
    for peer_id in peer_ids:
        check_node_id(peer_id, "peer id")
        if peer_id == self_id:
            raise ValueError(f"self_id {self_id!r} must not be among the peers")
        if peer_id in seen:
            raise ValueError(f"duplicate node id {peer_id!r} among the peers")
        seen.add(peer_id)
    if len(seen) + 1 > max_nodes:
        raise ValueError(f"{len(seen)} peers plus this node exceed max_nodes ({max_nodes})")
    if warn:
        _warn_about_units(self_id, timeout, timeout_max)
    return Config(
        self_id=self_id,
        election_timeout=timeout,
        election_timeout_max=timeout_max,
        heartbeat_interval=heartbeat,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        pre_vote=pre_vote,
        check_quorum=check_quorum,
        lease_duration=lease_duration(timeout, clock_drift),
        split_vote_retry=split_vote_retry,
        message_timeout=send_timeout,
        successor=successor,
        overload_backoff=overload_backoff,
    )


def _warn_about_units(self_id: NodeId, timeout: float, timeout_max: float) -> None:
    # 150 meant as 150 ms is a timeout of two and a half minutes: it works,
    # but a dead leader goes unnoticed that long.  The Rust crate takes
    # milliseconds, so ported values (5000/1000/20) land here too.
    for name, value in (("election_timeout", timeout), ("election_timeout_max", timeout_max)):
        if value > UNIT_WARNING_SECONDS:
            logger.warning(
                "node %r: %s is %g seconds (%.1f minutes): times are in seconds; "
                "if you meant %g milliseconds, write %g",
                self_id,
                name,
                value,
                value / 60,
                value,
                value / 1000,
            )
            return


def check_nodes(nodes: Iterable[Node]) -> dict[NodeId, Node]:
    """Check the peers given to ``init`` and return them by id, in order.

    Raises:
        TypeError: *nodes* is not an iterable of ``Node`` objects: for
            example the peers' ids instead of ``Node`` objects, or a
            ``send_message`` written with plain ``def``.
        ValueError: two nodes with one id.
    """
    if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Iterable):
        raise TypeError(f"nodes must be an iterable of Node objects, got {type(nodes).__name__}")
    peers: dict[NodeId, Node] = {}
    for node in nodes:
        item: object = node
        if isinstance(item, (str, int)) and type(item) is not bool:
            raise TypeError(
                f"nodes must hold Node objects, got the {type(item).__name__} {item!r}, which looks like a node id: "
                "pass, for each peer, an object with a node_id property and an async send_message(message) method "
                "(see Node)"
            )
        node_id = getattr(node, "node_id", None)
        if node_id is None:
            raise TypeError(f"nodes must hold Node objects, got a {type(node).__name__} without a node_id")
        check_node_id(node_id, "node.node_id")
        send = getattr(node, "send_message", None)
        if not callable(send):
            raise TypeError(f"node {node_id!r} has no send_message method")
        if not is_coroutine_function(send):
            raise TypeError(
                f"node {node_id!r}: send_message must be a coroutine function (async def), got a plain "
                f"{type(send).__name__}: the election awaits it"
            )
        if node_id in peers:
            raise ValueError(f"duplicate node id {node_id!r} in nodes")
        peers[node_id] = node
    return peers


def check_storage(storage: object) -> Storage:
    """Check the ``storage`` given to ``init`` (not ``None``) and return it.

    Raises:
        TypeError: not a ``Storage``: a path, an object without ``load`` or
            ``save``, or one whose methods are plain ``def``.
    """
    if isinstance(storage, (str, bytes, os.PathLike)):
        raise TypeError(f"storage must be a Storage object, got the path {storage!r}: use FileStorage(path)")
    for name in ("load", "save"):
        method = getattr(storage, name, None)
        if not callable(method):
            raise TypeError(
                f"storage must have async load() and save(hard_state) methods; {type(storage).__name__} has no {name}()"
            )
        if not is_coroutine_function(method):
            raise TypeError(
                f"storage.{name} must be a coroutine function (async def), got a plain {type(method).__name__}: "
                "the election awaits load() and save(hard_state)"
            )
    assert isinstance(storage, Storage)
    return storage


def is_coroutine_function(fn: object) -> bool:
    """Whether calling *fn* gives a coroutine: an ``async def`` function or method, a ``functools.partial``
    of one, an ``AsyncMock``, or an object whose ``__call__`` is ``async def``."""
    if inspect.iscoroutinefunction(fn):
        return True
    return callable(fn) and inspect.iscoroutinefunction(type(fn).__call__)
