"""The wire format: round trips, the documented layout, and a strict decoder with one exception type."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from almost_raft import Heartbeat, HeartbeatResponse, Message, RequestVote, TimeoutNow, VoteResponse
from almost_raft._messages import MESSAGE_TYPES
from almost_raft.transports import WireError, decode_frame, encode_message
from almost_raft.transports._wire import HEADER_SIZE, MAX_BODY_SIZE, FrameReader, decode_body, decode_header

node_ids = st.one_of(
    st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= 255),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
).filter(lambda v: not isinstance(v, str) or _encodable(v))
terms = st.integers(min_value=0, max_value=2**63 - 1)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(RequestVote, st.integers(1, 2**63 - 1), node_ids, st.booleans(), st.booleans()),
    st.builds(VoteResponse, terms, node_ids, st.booleans(), st.booleans()),
    st.builds(Heartbeat, terms, node_ids, terms),
    st.builds(Heartbeat, terms, st.just("leader"), terms, node_ids.filter(lambda v: v != "leader")),
    st.builds(HeartbeatResponse, terms, node_ids, st.booleans(), terms),
    st.builds(TimeoutNow, terms, node_ids),
)


def _frame(body: bytes | str, *, magic: bytes = b"AR", version: int = 1, flags: int = 0) -> bytes:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return struct.pack("!2sBBI", magic, version, flags, len(data)) + data


def test_documented_layout() -> None:
    frame = encode_message(Heartbeat(7, "a", 12))
    body = b'{"kind":"heartbeat","term":7,"leader_id":"a","seq":12}'
    assert frame == b"AR\x01\x00" + struct.pack("!I", len(body)) + body


def test_a_heartbeat_names_its_successor_only_when_there_is_one() -> None:
    """The optional field: absent when the leader names none, so an earlier decoder reads those unchanged."""
    assert b"successor" not in encode_message(Heartbeat(7, "a", 12))
    frame = encode_message(Heartbeat(7, "a", 12, successor=3))
    assert frame[HEADER_SIZE:] == b'{"kind":"heartbeat","term":7,"leader_id":"a","seq":12,"successor":3}'
    assert decode_frame(frame) == Heartbeat(7, "a", 12, 3)


@pytest.mark.parametrize(
    ("message", "body"),
    [
        (
            RequestVote(3, "b", pre_vote=True, transfer=False),
            {"kind": "request_vote", "term": 3, "candidate_id": "b", "pre_vote": True, "transfer": False},
        ),
        (
            VoteResponse(3, 2, True, False),
            {"kind": "vote_response", "term": 3, "voter_id": 2, "granted": True, "pre_vote": False},
        ),
        (Heartbeat(4, "a", 1), {"kind": "heartbeat", "term": 4, "leader_id": "a", "seq": 1}),
        (
            Heartbeat(4, "a", 1, successor="c"),
            {"kind": "heartbeat", "term": 4, "leader_id": "a", "seq": 1, "successor": "c"},
        ),
        (
            HeartbeatResponse(4, "c", False, 9),
            {"kind": "heartbeat_response", "term": 4, "follower_id": "c", "success": False, "seq": 9},
        ),
        (TimeoutNow(5, "a"), {"kind": "timeout_now", "term": 5, "leader_id": "a"}),
    ],
    ids=["request_vote", "vote_response", "heartbeat", "heartbeat-successor", "heartbeat_response", "timeout_now"],
)
def test_each_kind_has_the_documented_body(message: Message, body: dict[str, object]) -> None:
    frame = encode_message(message)
    assert json.loads(frame[HEADER_SIZE:]) == body
    assert decode_frame(_frame(json.dumps(body))) == message


@given(messages)
def test_round_trip(message: Message) -> None:
    assert decode_frame(encode_message(message)) == message


@pytest.mark.parametrize(
    ("frame", "fatal"),
    [
        (b"", True),
        (b"AR\x01\x00\x00\x00", True),  # truncated header
        (_frame('{"kind":"timeout_now","term":1,"leader_id":"a"}')[:-1], True),  # truncated body
        (_frame('{"kind":"timeout_now","term":1,"leader_id":"a"}') + b"x", True),  # trailing bytes
        (_frame("{}", magic=b"XX"), True),
        (_frame('{"kind":"timeout_now","term":1,"leader_id":"a"}', version=2), True),
        (_frame('{"kind":"timeout_now","term":1,"leader_id":"a"}', flags=1), True),
        (b"AR\x01\x00" + struct.pack("!I", MAX_BODY_SIZE + 1), True),  # oversized
        (b"AR\x01\x00" + struct.pack("!I", 1) + b"{", True),  # too small to be an object
    ],
    ids=["empty", "short-header", "short-body", "trailing", "magic", "version", "flags", "oversized", "tiny"],
)
def test_bad_frames_raise_wire_error(frame: bytes, fatal: bool) -> None:
    with pytest.raises(WireError) as info:
        decode_frame(frame)
    assert info.value.fatal is fatal


BAD_BODIES = {
    "not-json": b"{not json}",
    "invalid-utf8": b'{"kind":"timeout_now","term":1,"leader_id":"\xff"}',
    "lone-surrogate": b'{"kind":"timeout_now","term":1,"leader_id":"\\ud800"}',
    "array": b'[{"kind":"timeout_now","term":1,"leader_id":"a"}]',
    "unknown-kind": b'{"kind":"append_entries","term":1,"leader_id":"a"}',
    "kind-not-string": b'{"kind":1,"term":1,"leader_id":"a"}',
    "missing-field": b'{"kind":"timeout_now","term":1}',
    "extra-field": b'{"kind":"timeout_now","term":1,"leader_id":"a","x":1}',
    "duplicate-key": b'{"kind":"timeout_now","term":1,"term":2,"leader_id":"a"}',
    "nested-value": b'{"kind":"timeout_now","term":[1],"leader_id":"a"}',
    "nested-object": b'{"kind":"timeout_now","term":1,"leader_id":{"a":1}}',
    "deep-nesting": b"[" * 3000,
    "float-term": b'{"kind":"timeout_now","term":1.0,"leader_id":"a"}',
    "nan": b'{"kind":"timeout_now","term":NaN,"leader_id":"a"}',
    "infinity": b'{"kind":"timeout_now","term":Infinity,"leader_id":"a"}',
    "negative-term": b'{"kind":"timeout_now","term":-1,"leader_id":"a"}',
    "huge-term": b'{"kind":"timeout_now","term":9223372036854775808,"leader_id":"a"}',
    "bool-term": b'{"kind":"timeout_now","term":true,"leader_id":"a"}',
    "string-term": b'{"kind":"timeout_now","term":"1","leader_id":"a"}',
    "null-id": b'{"kind":"timeout_now","term":1,"leader_id":null}',
    "bool-id": b'{"kind":"timeout_now","term":1,"leader_id":false}',
    "empty-id": b'{"kind":"timeout_now","term":1,"leader_id":""}',
    "long-id": b'{"kind":"timeout_now","term":1,"leader_id":"' + b"x" * 256 + b'"}',
    "int-flag": b'{"kind":"heartbeat_response","term":1,"follower_id":"a","success":1,"seq":0}',
    "pre-vote-term-0": b'{"kind":"request_vote","term":0,"candidate_id":"a","pre_vote":true,"transfer":false}',
    # The heartbeat's one optional field: absent means none, never null; an id, never the leader.
    "null-successor": b'{"kind":"heartbeat","term":1,"leader_id":"a","seq":1,"successor":null}',
    "bool-successor": b'{"kind":"heartbeat","term":1,"leader_id":"a","seq":1,"successor":true}',
    "empty-successor": b'{"kind":"heartbeat","term":1,"leader_id":"a","seq":1,"successor":""}',
    "leader-successor": b'{"kind":"heartbeat","term":1,"leader_id":"a","seq":1,"successor":"a"}',
    "successor-elsewhere": b'{"kind":"timeout_now","term":1,"leader_id":"a","successor":"b"}',
    "successor-no-seq": b'{"kind":"heartbeat","term":1,"leader_id":"a","successor":"b"}',
}


@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_bad_bodies_raise_wire_error_and_nothing_else(body: bytes) -> None:
    with pytest.raises(WireError) as info:
        decode_frame(_frame(body))
    assert info.value.fatal is False
    assert isinstance(info.value, ValueError)


def test_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(WireError):
        encode_message(TimeoutNow(1, "x" * 256))
    with pytest.raises(WireError):
        encode_message(TimeoutNow(2**63, "a"))
    with pytest.raises(WireError):
        encode_message("not a message")  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_message_or_wire_error(data: bytes) -> None:
    # Anything but a message or WireError escapes and fails the test.
    for frame in (data, _frame(data)):
        with contextlib.suppress(WireError):
            assert isinstance(decode_frame(frame), MESSAGE_TYPES)
    with contextlib.suppress(WireError):
        assert isinstance(decode_body(data), MESSAGE_TYPES)
    with contextlib.suppress(WireError):
        assert isinstance(decode_header(data[:HEADER_SIZE]), int)


@given(st.lists(messages, min_size=1, max_size=20), st.integers(1, 50))
def test_frame_reader_splits_a_stream_cut_anywhere(batch: list[Message], chunk: int) -> None:
    stream = b"".join(encode_message(m) for m in batch)
    reader = FrameReader()
    out: list[Message] = []
    for start in range(0, len(stream), chunk):
        reader.feed(stream[start : start + chunk])
        while (item := reader.next()) is not None:
            assert not isinstance(item, WireError)
            out.append(item)
    assert out == batch
    assert reader.pending == 0


def test_frame_reader_skips_a_bad_body_and_stops_at_a_bad_header() -> None:
    reader = FrameReader()
    good = encode_message(TimeoutNow(1, "a"))
    reader.feed(_frame(b'{"kind":"nope"}') + good + b"XX")
    first = reader.next()
    assert isinstance(first, WireError)
    assert reader.next() == TimeoutNow(1, "a")
    with pytest.raises(WireError) as info:
        reader.next()
    assert info.value.fatal
    # A header cut short still counts as an unfinished frame.
    reader = FrameReader()
    reader.feed(good[:HEADER_SIZE])
    assert reader.next() is None
    assert reader.pending == HEADER_SIZE
