"""``RaftElectionState.init``: a configuration that cannot work raises at once; good ones are accepted.

docs/specification.md ("Configuration"): ``init`` raises ``ValueError`` at
once for a configuration that cannot work: non-positive times, a heartbeat
interval above half the election timeout, ``min_nodes > max_nodes``, more
nodes than ``max_nodes``, duplicate node ids, ``self_id`` among the peers.  Values of the wrong type raise
``TypeError``.  Also ``status()`` before the election runs, and
``subscribe(buffer)``.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import AsyncMock

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
        state.runtime.inbox.close()


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
    """Specification: each configuration that cannot work raises ``ValueError`` at once, naming the problem."""
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
    """Specification: the lease lasts ``T`` less a margin for clock drift."""
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
    """Specification: a subscription starts with the current view, ``LeaderChanged(0, None)`` before start."""
    with built() as state, state.subscribe(buffer=1) as events:
        assert events.receive_nowait() == LeaderChanged(0, None)
        with pytest.raises(anyio.WouldBlock):
            events.receive_nowait()


# ------------------------------------------------ issue 11: fail at start, clearly


class SyncStorage:
    """A ``Storage`` written with plain ``def``: the election could not await it."""

    def load(self) -> HardState | None:
        return None

    def save(self, hard_state: HardState) -> None:
        """Forget *hard_state*."""


class HalfSyncStorage:
    async def load(self) -> HardState | None:
        return None

    def save(self, hard_state: HardState) -> None:
        """Plain ``def``."""


class SyncPeer:
    """A ``Node`` whose ``send_message`` is plain ``def``."""

    node_id = "b"

    def send_message(self, message: Message) -> None:
        """Would return ``None`` where a coroutine is awaited."""


class _AsyncCallable:
    async def __call__(self, message: Message) -> None:
        """Accept and forget *message*."""


class CallablePeer:
    """A ``Node`` whose ``send_message`` is an object with ``async def __call__``."""

    node_id = "c"
    send_message = _AsyncCallable()


class PartialPeer:
    """A ``Node`` whose ``send_message`` is a ``functools.partial`` of a coroutine function."""

    node_id = "d"

    def __init__(self) -> None:
        async def send(prefix: str, message: Message) -> None:
            """Accept and forget *message*."""

        self.send_message = functools.partial(send, "x")


class MockPeer:
    node_id = "e"
    send_message = AsyncMock()


OBJECT_ERRORS: list[tuple[str, dict[str, object], str]] = [
    ("storage-plain-def", {"storage": SyncStorage()}, r"storage\.load must be a coroutine function \(async def\)"),
    ("storage-save-plain-def", {"storage": HalfSyncStorage()}, r"storage\.save must be a coroutine function"),
    ("storage-path-object", {"storage": Path("state.json")}, r"got the path .*FileStorage\(path\)"),
    ("node-plain-def", {"nodes": [SyncPeer()]}, r"node 'b': send_message must be a coroutine function \(async def\)"),
    ("ids-instead-of-nodes", {"nodes": ["b", "c"]}, r"nodes must hold Node objects, got the str 'b', which looks like"),
    ("int-ids-instead-of-nodes", {"nodes": [2, 3]}, r"got the int 2, which looks like a node id"),
    ("a-string-as-nodes", {"nodes": "bc"}, r"nodes must be an iterable of Node objects, got str"),
]


@pytest.mark.parametrize(("options", "message"), [pytest.param(o, m, id=i) for i, o, m in OBJECT_ERRORS])
def test_objects_of_the_wrong_kind_are_refused_naming_the_real_problem(
    options: dict[str, object], message: str
) -> None:
    """Issue 11 item 2: plain ``def`` where ``async def`` is needed, or ids for ``Node`` objects, fail in ``init``."""
    with pytest.raises(TypeError, match=message), built(**options):
        pass


def test_coroutine_functions_of_every_shape_are_accepted() -> None:
    """A bound ``async def``, a ``functools.partial`` of one, an async callable object and an ``AsyncMock``."""
    nodes = [Peer("b"), CallablePeer(), PartialPeer(), MockPeer()]
    with built(nodes=nodes) as state:
        assert state.peer_ids == ("b", "c", "d", "e")


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"message_timeout": T + 0.001}, "message_timeout"),
        ({"message_timeout": 1.0}, "message_timeout"),
        ({"election_timeout": 0.05, "message_timeout": 0.06, "heartbeat_interval": 0.01}, "message_timeout"),
    ],
    ids=["just-above-T", "far-above-T", "small-T"],
)
def test_a_message_timeout_beyond_T_is_refused(options: dict[str, object], names: str) -> None:
    """Issue 11 item 3: a send still running after ``T`` arrives after its receiver timed out: it cannot work."""
    with pytest.raises(ValueError, match=names), built(**options):
        pass


def test_a_message_timeout_of_T_is_accepted() -> None:
    with built(message_timeout=T) as state:
        assert state.message_timeout == T


def test_defaults_follow_the_election_timeout() -> None:
    """Issue 11 item 3: heartbeat ``T / 3`` (as the CLI), message timeout = heartbeat, ``T_max = 2T``."""
    for timeout in (0.05, 0.15, 2.0, 0.001):
        state, control = RaftElectionState.init("a", election_timeout=timeout)
        try:
            assert state.config.heartbeat_interval == pytest.approx(timeout / 3)
            assert state.message_timeout == state.config.heartbeat_interval
            assert state.config.election_timeout_max == 2 * timeout
        finally:
            control.close()
            state.runtime.inbox.close()
    with built(heartbeat_interval=None, message_timeout=None) as state:
        assert state.config.heartbeat_interval == pytest.approx(T / 3)
    with built(heartbeat_interval=0.02, message_timeout=None) as state:
        assert state.message_timeout == 0.02


def test_the_cli_and_the_api_share_their_defaults() -> None:
    """The CLI's timing defaults are those of ``init`` (one ``make_config``)."""
    from almost_raft._cli import parse_args

    opts = parse_args(["--id", "a", "--listen", "127.0.0.1:7001", "--election-timeout", "0.3"])
    state, control = RaftElectionState.init("a", election_timeout=0.3)
    try:
        assert (opts.heartbeat_interval, opts.message_timeout) == (
            state.config.heartbeat_interval,
            state.message_timeout,
        )
    finally:
        control.close()
        state.runtime.inbox.close()


@pytest.mark.parametrize(
    "options",
    [
        {"election_timeout": 150},
        {"election_timeout": 5000, "heartbeat_interval": 1000, "message_timeout": 20},  # the Rust crate's values
        {"election_timeout": 0.15, "election_timeout_max": 300},
    ],
    ids=["150", "rust-crate-ms", "max-300"],
)
def test_an_election_timeout_over_a_minute_warns_about_units(
    options: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11 item 3: accepted (it works), with one WARNING that names seconds and the millisecond mistake."""
    with caplog.at_level(logging.WARNING, logger="almost_raft"), built(**options):
        pass
    (record,) = [r for r in caplog.records if r.name == "almost_raft"]
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert text.startswith("node 'a': election_timeout")
    assert "seconds" in text
    assert "milliseconds" in text


def test_a_minute_is_not_a_unit_mistake(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="almost_raft"), built(election_timeout=60, election_timeout_max=60):
        pass
    assert not [r for r in caplog.records if r.name == "almost_raft"]
