"""Messages, control messages, events and ``HardState``: checked constructors and value semantics.

docs/specification.md ("Messages"): messages and events are frozen
dataclasses with slots that compare by value, and their constructors reject
bad values at once (``TypeError`` / ``ValueError``: a negative or
non-integer term, an id that is neither ``str`` nor ``int``).  Each error names the field.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from almost_raft import (
    AddNode,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    LeaderChanged,
    RemoveNode,
    RequestVote,
    Role,
    TimeoutNow,
    TransferLeadership,
    VoteResponse,
)
from almost_raft._messages import Message, NodeId


class _Peer:
    """A minimal ``Node`` (its id may be made wrong on purpose)."""

    def __init__(self, node_id: object) -> None:
        self._id: Any = node_id

    @property
    def node_id(self) -> NodeId:
        return self._id  # type: ignore[no-any-return]

    async def send_message(self, message: Message) -> None:
        """Accept and forget *message*."""


class _NoSend:
    node_id = "x"


# Every class with a valid set of keyword arguments.
GOOD: dict[type, dict[str, object]] = {
    RequestVote: {"term": 1, "candidate_id": "a", "pre_vote": False, "transfer": False},
    VoteResponse: {"term": 1, "voter_id": "a", "granted": True, "pre_vote": False},
    Heartbeat: {"term": 1, "leader_id": "a", "seq": 3},
    HeartbeatResponse: {"term": 1, "follower_id": "a", "success": True, "seq": 3},
    TimeoutNow: {"term": 1, "leader_id": "a"},
    RemoveNode: {"node_id": "a"},
    TransferLeadership: {"target_id": "a"},
    LeaderChanged: {"term": 1, "leader_id": "a"},
    HardState: {"term": 1, "voted_for": "a"},
}

TERM_FIELDS = [(c, "term") for c in GOOD if "term" in GOOD[c]] + [(Heartbeat, "seq"), (HeartbeatResponse, "seq")]
ID_FIELDS = [
    (RequestVote, "candidate_id"),
    (VoteResponse, "voter_id"),
    (Heartbeat, "leader_id"),
    (HeartbeatResponse, "follower_id"),
    (TimeoutNow, "leader_id"),
    (RemoveNode, "node_id"),
    (TransferLeadership, "target_id"),
    (LeaderChanged, "leader_id"),
    (HardState, "voted_for"),
]
FLAG_FIELDS = [
    (RequestVote, "pre_vote"),
    (RequestVote, "transfer"),
    (VoteResponse, "granted"),
    (VoteResponse, "pre_vote"),
    (HeartbeatResponse, "success"),
]

BAD_TERMS: list[tuple[object, type[Exception]]] = [
    (True, TypeError),
    (False, TypeError),
    (-1, ValueError),
    (1.0, TypeError),
    (math.nan, TypeError),
    ("1", TypeError),
    (None, TypeError),
]
BAD_IDS: list[object] = [True, False, 1.5, b"a", ("a",), ["a"], object()]
BAD_FLAGS: list[object] = [1, 0, "yes", None, 1.0]
OPTIONAL_IDS = {(TransferLeadership, "target_id"), (LeaderChanged, "leader_id"), (HardState, "voted_for")}


def _build(cls: type, **changes: object) -> object:
    kwargs = {**GOOD[cls], **changes}
    return cls(**kwargs)


def _ids(prefix: str) -> Callable[[object], str]:
    return lambda v: f"{prefix}{v!r}"


@pytest.mark.parametrize(("bad", "error"), BAD_TERMS, ids=[repr(b) for b, _ in BAD_TERMS])
@pytest.mark.parametrize(("cls", "field"), TERM_FIELDS, ids=[f"{c.__name__}.{f}" for c, f in TERM_FIELDS])
def test_bad_terms_are_rejected_naming_the_field(cls: type, field: str, bad: object, error: type[Exception]) -> None:
    """A term (or seq) must be an int, not a bool, and not negative."""
    with pytest.raises(error, match=rf"{cls.__name__}\.{field}"):
        _build(cls, **{field: bad})


@pytest.mark.parametrize("bad", BAD_IDS, ids=[type(b).__name__ + repr(b)[:8] for b in BAD_IDS])
@pytest.mark.parametrize(("cls", "field"), ID_FIELDS, ids=[f"{c.__name__}.{f}" for c, f in ID_FIELDS])
def test_bad_ids_are_rejected_naming_the_field(cls: type, field: str, bad: object) -> None:
    """An id must be a ``str`` or an ``int`` (not a ``bool``)."""
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.{field}"):
        _build(cls, **{field: bad})


@pytest.mark.parametrize(("cls", "field"), ID_FIELDS, ids=[f"{c.__name__}.{f}" for c, f in ID_FIELDS])
def test_none_is_an_id_only_where_documented(cls: type, field: str) -> None:
    """``None`` means "no leader / no target / no vote" where the specification says so, and is refused elsewhere."""
    if (cls, field) in OPTIONAL_IDS:
        assert getattr(_build(cls, **{field: None}), field) is None
    else:
        with pytest.raises(TypeError, match=rf"{cls.__name__}\.{field}"):
            _build(cls, **{field: None})


@pytest.mark.parametrize("bad", BAD_FLAGS, ids=[repr(b) for b in BAD_FLAGS])
@pytest.mark.parametrize(("cls", "field"), FLAG_FIELDS, ids=[f"{c.__name__}.{f}" for c, f in FLAG_FIELDS])
def test_non_bool_flags_are_rejected_naming_the_field(cls: type, field: str, bad: object) -> None:
    """A flag must be a real ``bool``: ``1`` or ``"yes"`` is a bug, not a yes."""
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.{field}"):
        _build(cls, **{field: bad})


def test_a_pre_vote_names_a_term_above_zero() -> None:
    """A pre-vote asks about ``term + 1`` of a node, so it can never name term 0."""
    with pytest.raises(ValueError, match=r"RequestVote\.term"):
        RequestVote(0, "a", pre_vote=True)
    assert RequestVote(0, "a").term == 0


@pytest.mark.parametrize(
    "node",
    [object(), _NoSend(), _Peer(True), _Peer(1.5), _Peer(None)],
    ids=["no-node-id", "no-send_message", "bool-id", "float-id", "none-id"],
)
def test_add_node_rejects_what_is_not_a_node(node: object) -> None:
    """``AddNode`` needs a ``Node``: a valid ``node_id`` and a ``send_message`` method."""
    with pytest.raises(TypeError, match="AddNode"):
        AddNode(node)  # type: ignore[arg-type]


def test_good_values_are_accepted() -> None:
    """Ids may be ``str`` or ``int`` (0 included); terms may be 0; defaults are as documented."""
    assert RequestVote(0, 0) == RequestVote(0, 0, pre_vote=False, transfer=False)
    assert VoteResponse(5, 7, False).pre_vote is False
    assert Heartbeat(2, "x").seq == 0
    assert HeartbeatResponse(2, "x", False).seq == 0
    assert TransferLeadership().target_id is None
    assert LeaderChanged(3, None).leader_id is None
    assert HardState(0).voted_for is None
    assert AddNode(_Peer(4)).node.node_id == 4
    assert RemoveNode(0).node_id == 0


SAMPLES: list[object] = [_build(c) for c in GOOD] + [AddNode(_Peer("p"))]
SAMPLE_IDS = [type(s).__name__ for s in SAMPLES]


@pytest.mark.parametrize("value", SAMPLES, ids=SAMPLE_IDS)
def test_frozen_and_slotted(value: object) -> None:
    """Frozen: no field can be reassigned; slotted: no ``__dict__``, no new attributes."""
    assert dataclasses.is_dataclass(value)
    first = dataclasses.fields(value)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, first, getattr(value, first))
    assert not hasattr(value, "__dict__")
    assert "__slots__" in type(value).__dict__
    with pytest.raises(AttributeError):
        object.__setattr__(value, "extra", 1)  # only a __dict__ could take it


@pytest.mark.parametrize("value", SAMPLES, ids=SAMPLE_IDS)
def test_hashable_and_compared_by_value(value: object) -> None:
    """Equal fields make equal, equally hashed values; one changed field makes a different one."""
    twin = copy.copy(value)
    assert twin == value
    assert hash(twin) == hash(value)
    assert len({value, twin}) == 1
    if not isinstance(value, AddNode):
        assert pickle.loads(pickle.dumps(value)) == value
        assert _build(type(value)) == value
    field = dataclasses.fields(value)[0]  # type: ignore[arg-type]
    other = dataclasses.replace(value, **{field.name: _different(getattr(value, field.name))})  # type: ignore[type-var]
    assert other != value


def _different(v: object) -> object:
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, str):
        return v + "'"
    return _Peer("q")


def test_different_kinds_with_equal_fields_are_not_equal() -> None:
    """Comparison is by value *and* kind: a vote answer is not a heartbeat answer."""
    assert VoteResponse(1, "a", True) != HeartbeatResponse(1, "a", True)  # type: ignore[comparison-overlap]
    assert Heartbeat(1, "a") != TimeoutNow(1, "a")  # type: ignore[comparison-overlap]
    assert RequestVote(1, "a") != RequestVote(1, "a", pre_vote=True)
    assert RequestVote(1, "a") != RequestVote(1, "a", transfer=True)
    assert LeaderChanged(1, None) != LeaderChanged(1, "a")


def test_every_peer_message_names_its_sender_and_validates_again() -> None:
    """``.sender`` is the field naming the sending node; ``.validate()`` checks every field again.

    (The driver calls ``validate()`` on what arrives from the network, in
    case something built the value without its constructor.)
    """
    messages: list[Message] = [
        RequestVote(1, "s"),
        VoteResponse(1, "s", True),
        Heartbeat(1, "s"),
        HeartbeatResponse(1, "s", True),
        TimeoutNow(1, "s"),
    ]
    for m in messages:
        assert m.sender == "s"
        m.validate()
        broken = copy.copy(m)
        object.__setattr__(broken, "term", -3)
        with pytest.raises(ValueError, match="term"):
            broken.validate()


def test_role_members() -> None:
    """``Role`` has exactly the specification's four members, upper case."""
    assert [r.name for r in Role] == ["FOLLOWER", "CANDIDATE", "LEADER", "TERMINATED"]
