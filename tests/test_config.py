"""``RaftElectionState.init``: a configuration that cannot work raises at once; good ones are accepted.

DESIGN: "It raises ``ValueError`` at once for a configuration that cannot
work: non-positive times, a heartbeat interval above half the election
timeout, ``min_nodes > max_nodes``, more nodes than ``max_nodes``, duplicate
node ids, ``self_id`` among the peers."  Values of the wrong type raise
``TypeError``.  Also ``status()`` before the election runs, and
``subscribe(buffer)``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from almost_raft import FileStorage, HardState, LeaderChanged, MemoryStorage, RaftElectionState, Role
from almost_raft._messages import Message


class Peer:
    """A minimal ``Node``."""

    def __init__(self, node_id: object) -> None:
        self._id = node_id

    @property
    def node_id(self) -> object:
        return self._id

    async def send_message(self, message: Message) -> None:
        """Accept and forget *message*."""


class CustomStorage:
    """A ``Storage`` that is neither of the shipped ones."""

    async def load(self) -> HardState | None:
        return None

    async def save(self, hard_state: HardState) -> None:
        """Forget *hard_state*."""


class NotStorage:
    async def load(self) -> None:
        """Only half a storage."""


T = 0.150
GOOD: dict[str, object] = {"election_timeout": T, "heartbeat_interval": 0.050, "message_timeout": 0.050}


@contextmanager
def built(self_id: object = "a", **options: object) -> Iterator[RaftElectionState]:
    """``RaftElectionState.init`` with the good defaults; closes both ends of ``control`` afterwards."""
    state, control = RaftElectionState.init(self_id, **{**GOOD, **options})  # type: ignore[arg-type]
    try:
        yield state
    finally:
        control.close()
        # A state that never ran keeps the receiving end; close it too, or
        # anyio warns about an unclosed stream (there is no public close()).
        state._inbox.close()


def _peers(*ids: object) -> list[Peer]:
    return [Peer(i) for i in ids]


BAD_TIMES = [0, -0.1, math.nan, math.inf, -math.inf]
TIME_FIELDS = ["election_timeout", "heartbeat_interval", "message_timeout", "election_timeout_max"]
Case = tuple[str, dict[str, object], str]


def _time_case(field: str, value: object) -> Case:
    return (f"{field}={value!r}", {field: value}, field)


VALUE_ERRORS: list[Case] = [
    *[_time_case(f, v) for f in TIME_FIELDS for v in BAD_TIMES],
    ("heartbeat-above-T/2", {"heartbeat_interval": T / 2 + 0.001}, "heartbeat_interval"),
    ("heartbeat-equal-T", {"heartbeat_interval": T}, "heartbeat_interval"),
    ("election_timeout_max-below-T", {"election_timeout_max": T - 0.01}, "election_timeout_max"),
    ("min_nodes=0", {"min_nodes": 0}, "min_nodes"),
    ("max_nodes=0", {"max_nodes": 0}, "max_nodes"),
    ("max_nodes=-1", {"max_nodes": -1}, "max_nodes"),
    ("min_nodes>max_nodes", {"min_nodes": 5, "max_nodes": 3}, "min_nodes"),
    ("more-nodes-than-max_nodes", {"nodes": _peers("b", "c", "d"), "max_nodes": 3}, "max_nodes"),
    ("duplicate-ids", {"nodes": _peers("b", "c", "b")}, "duplicate"),
    ("duplicate-int-ids", {"nodes": _peers(1, 2, 1)}, "duplicate"),
    ("self-among-peers", {"nodes": _peers("b", "a")}, "self_id"),
    ("clock_drift-negative", {"clock_drift": -0.1}, "clock_drift"),
    ("clock_drift-too-large", {"clock_drift": 0.5}, "clock_drift"),
    ("clock_drift-nan", {"clock_drift": math.nan}, "clock_drift"),
]

TYPE_ERRORS: list[Case] = [
    # None is the default of the times that follow T (see test_defaults_follow_the_election_timeout).
    *[_time_case(f, v) for f in TIME_FIELDS for v in (True, "0.1", None) if v is not None or f == "election_timeout"],
    ("min_nodes-bool", {"min_nodes": True}, "min_nodes"),
    ("min_nodes-float", {"min_nodes": 2.0}, "min_nodes"),
    ("max_nodes-str", {"max_nodes": "7"}, "max_nodes"),
    ("pre_vote-int", {"pre_vote": 1}, "pre_vote"),
    ("check_quorum-str", {"check_quorum": "yes"}, "check_quorum"),
    ("rng-int-seed", {"rng": 42}, "rng"),
    ("rng-module", {"rng": random}, "rng"),
    ("storage-object", {"storage": object()}, "storage"),
    ("storage-half", {"storage": NotStorage()}, "storage"),
    ("storage-path", {"storage": "state.json"}, "storage"),
    ("node-without-send_message", {"nodes": [object()]}, "node"),
    ("node-with-bool-id", {"nodes": _peers(True)}, "node"),
    ("node-with-float-id", {"nodes": _peers(1.5)}, "node"),
    ("clock_drift-str", {"clock_drift": "0.01"}, "clock_drift"),
]


@pytest.mark.parametrize(("options", "names"), [pytest.param(o, n, id=i) for i, o, n in VALUE_ERRORS])
def test_unworkable_configurations_raise_value_error(options: dict[str, object], names: str) -> None:
    """DESIGN: each configuration that cannot work raises ``ValueError`` at once, naming the problem."""
    with pytest.raises(ValueError, match=names), built(**options):
        pass


@pytest.mark.parametrize(("options", "names"), [pytest.param(o, n, id=i) for i, o, n in TYPE_ERRORS])
def test_values_of_the_wrong_type_raise_type_error(options: dict[str, object], names: str) -> None:
    """A value of the wrong type raises ``TypeError`` at once, naming the argument."""
    with pytest.raises(TypeError, match=names), built(**options):
        pass


@pytest.mark.parametrize("self_id", [True, 1.5, None, b"a", ("a",)], ids=repr)
def test_bad_self_id(self_id: object) -> None:
    """``self_id`` is a ``str`` or an ``int``, never a ``bool``."""
    with pytest.raises(TypeError, match="self_id"), built(self_id):
        pass


GOOD_CONFIGS: list[tuple[str, object, dict[str, object]]] = [
    ("defaults", "a", {}),
    ("heartbeat-exactly-T/2", "a", {"heartbeat_interval": T / 2}),
    ("no-randomness", "a", {"election_timeout_max": T}),
    ("int-ids", 1, {"nodes": _peers(2, 3), "min_nodes": 3}),
    ("id-zero", 0, {"nodes": _peers(1)}),
    ("mixed-ids", "1", {"nodes": _peers(1)}),
    ("min-equals-max", "a", {"min_nodes": 3, "max_nodes": 3, "nodes": _peers("b", "c")}),
    ("full-cluster", "a", {"max_nodes": 3, "nodes": _peers("b", "c")}),
    ("min-above-size", "a", {"min_nodes": 5, "max_nodes": 7}),
    ("options-off", "a", {"pre_vote": False, "check_quorum": False, "clock_drift": 0}),
    ("int-times", "a", {"election_timeout": 10, "heartbeat_interval": 5, "message_timeout": 1}),
    ("seeded-rng", "a", {"rng": random.Random(5)}),
    ("memory-storage", "a", {"storage": MemoryStorage()}),
    ("custom-storage", "a", {"storage": CustomStorage()}),
]


@pytest.mark.parametrize(("self_id", "options"), [pytest.param(s, o, id=i) for i, s, o in GOOD_CONFIGS])
def test_good_configurations_are_accepted(self_id: object, options: dict[str, object]) -> None:
    """Boundary values that can work are accepted, and the checked config is what was asked for."""
    with built(self_id, **options) as state:
        cfg = state.config
        assert state.self_id == self_id
        assert cfg.election_timeout == options.get("election_timeout", T)
        assert cfg.election_timeout_max == options.get("election_timeout_max", 2 * cfg.election_timeout)
        assert 0 < cfg.lease_duration <= cfg.election_timeout
        assert cfg.min_nodes <= cfg.max_nodes
        nodes = options.get("nodes", [])
        assert state.peer_ids == tuple(n.node_id for n in nodes)  # type: ignore[attr-defined]
        if "rng" in options:
            assert state.rng is options["rng"]
        if "storage" in options:
            assert state.storage is options["storage"]


def test_file_storage_is_accepted(tmp_path: Path) -> None:
    """``FileStorage`` satisfies the ``Storage`` protocol."""
    storage = FileStorage(tmp_path / "state.json")
    with built(storage=storage) as state:
        assert state.storage is storage


def test_lease_is_shorter_than_T_by_the_clock_drift_margin() -> None:
    """DESIGN: the lease lasts ``T`` less a margin for clock drift."""
    with built(clock_drift=0.01) as state:
        assert state.config.lease_duration == pytest.approx(T * 0.99 / 1.01)
    with built(clock_drift=0) as state:
        assert state.config.lease_duration == T


def test_status_before_start() -> None:
    """Before ``raft_election`` runs: a follower of term 0 with no leader, no lease and all counters 0."""
    with built(nodes=_peers("b", "c"), min_nodes=3) as state:
        assert (state.role, state.term, state.leader_id) == (Role.FOLLOWER, 0, None)
        assert not state.is_leader
        assert not state.holds_lease
        s = state.status()
        assert s.self_id == "a"
        assert s.role is Role.FOLLOWER
        assert s.term == 0
        assert s.leader_id is None
        assert s.voted_for is None
        assert not s.is_leader
        assert not s.holds_lease
        assert s.lease_remaining == 0.0
        assert s.peer_ids == ("b", "c")
        for name in (
            "elections_started",
            "elections_won",
            "step_downs",
            "messages_received",
            "messages_sent",
            "messages_rejected",
            "send_failures",
        ):
            value = getattr(s, name)
            assert type(value) is int, name
            assert value == 0, name
        assert s.as_dict()["role"] == "follower"


@pytest.mark.parametrize(
    ("buffer", "error"), [(0, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError), ("4", TypeError)]
)
def test_subscribe_validates_buffer(buffer: object, error: type[Exception]) -> None:
    """``subscribe(buffer)`` needs a positive ``int``."""
    with built() as state, pytest.raises(error, match="buffer"):
        state.subscribe(buffer)  # type: ignore[arg-type]


def test_subscribe_starts_with_the_current_view() -> None:
    """DESIGN: a subscription starts with the current view, ``LeaderChanged(0, None)`` before start."""
    with built() as state, state.subscribe(buffer=1) as events:
        assert events.receive_nowait() == LeaderChanged(0, None)
        with pytest.raises(anyio.WouldBlock):
            events.receive_nowait()
