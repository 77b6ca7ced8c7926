"""Fuzzing a live node's listener: random and mutated frames never crash it or change its state."""

from __future__ import annotations

import json
import random
import signal
import socket
import struct
from collections.abc import Callable

import pytest

from almost_raft import Heartbeat, HeartbeatResponse, Message, RequestVote, TimeoutNow, VoteResponse
from almost_raft.transports import WireError, decode_frame, encode_message
from almost_raft.transports._wire import HEADER_SIZE, MAGIC, MAX_BODY_SIZE, WIRE_VERSION

from ._procs import ProcCluster
from .test_processes import assert_one_leader_per_term

pytestmark = pytest.mark.slow

STRANGER = "zz-fuzz"
"""Sender of the seed messages: a node no member knows, so a frame that survives mutation is still refused."""


def _frame(body: bytes) -> bytes:
    return struct.pack("!2sBBI", MAGIC, WIRE_VERSION, 0, len(body)) + body


def _seed_messages(rng: random.Random) -> list[Message]:
    term = rng.randrange(0, 2**40)
    return [
        RequestVote(term + 1, STRANGER, pre_vote=rng.random() < 0.5, transfer=rng.random() < 0.5),
        VoteResponse(term, STRANGER, rng.random() < 0.5, rng.random() < 0.5),
        Heartbeat(term, STRANGER, rng.randrange(0, 1000)),
        HeartbeatResponse(term, STRANGER, rng.random() < 0.5, rng.randrange(0, 1000)),
        TimeoutNow(term, STRANGER),
    ]


_ODD_VALUES: list[object] = [
    None, True, 1.5, -1, 2**63, 2**64, "", "x" * 300, [], {}, [1, [2]], {"a": {"b": 1}}, "a", 0,
]  # fmt: skip


def _json_mutation(rng: random.Random, message: Message) -> bytes:
    """A body that is JSON, but not a valid message (most of the time)."""
    body: dict[str, object] = json.loads(encode_message(message)[HEADER_SIZE:])
    choice = rng.randrange(9)
    key = rng.choice(list(body))
    if choice == 0:
        del body[key]
    elif choice == 1:
        body[rng.choice(["extra", "Term", "kind2", "sender"])] = rng.choice(_ODD_VALUES)
    elif choice == 2:
        body[key] = rng.choice(_ODD_VALUES)
    elif choice == 3:
        body["kind"] = rng.choice(["", "Heartbeat", "append_entries", "heartbeat ", 7, None])
    elif choice == 4:
        text = json.dumps(body)
        return (text[:-1] + f', "{key}": 1}}').encode()  # duplicate key
    elif choice == 5:
        return json.dumps([body]).encode()  # extra nesting
    elif choice == 6:
        return ("[" * rng.randrange(100, 2000)).encode()  # deep nesting
    elif choice == 7:
        return json.dumps(body).replace('"term": ', '"term": NaN, "x": ', 1).encode()
    else:
        return json.dumps(body).encode("utf-8").replace(b"{", b"{\xff\xfe", 1)  # invalid UTF-8
    return json.dumps(body).encode()


def _byte_mutation(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and len(data) > 2:
            del data[min(pos, len(data) - 1)]
        else:
            data = data[: max(2, pos)]
    return bytes(data[:MAX_BODY_SIZE]) if len(data) >= 2 else b"{}"


def _body_frames(rng: random.Random, members: set[str], count: int) -> tuple[bytes, int]:
    """*count* frames with sound headers; returns them and how many the decoder refuses."""
    out = bytearray()
    refused = 0
    sent = 0
    while sent < count:
        message = rng.choice(_seed_messages(rng))
        kind = rng.randrange(3)
        if kind == 0:
            body = _json_mutation(rng, message)
        elif kind == 1:
            body = _byte_mutation(rng, encode_message(message)[HEADER_SIZE:])
        else:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(2, 64)))
        if len(body) < 2 or len(body) > MAX_BODY_SIZE:
            continue
        frame = _frame(body)
        try:
            decoded = decode_frame(frame)
        except WireError:
            refused += 1
        else:
            if str(decoded.sender) in members:
                continue  # a valid message from a member may legitimately change state: not fuzz
        out += frame
        sent += 1
    return bytes(out), refused


def _header_frames(rng: random.Random) -> bytes:
    """One frame whose header is wrong, or that stops short (sent on a connection of its own)."""
    good = encode_message(rng.choice(_seed_messages(rng)))
    choice = rng.randrange(7)
    if choice == 0:
        return b"GET / HTTP/1.1\r\n\r\n"
    if choice == 1:
        return struct.pack("!2sBBI", MAGIC, WIRE_VERSION + rng.randrange(1, 200), 0, 10) + good[HEADER_SIZE:]
    if choice == 2:
        return struct.pack("!2sBBI", MAGIC, WIRE_VERSION, rng.randrange(1, 256), 10) + good[HEADER_SIZE:]
    if choice == 3:
        return struct.pack("!2sBBI", MAGIC, WIRE_VERSION, 0, rng.randrange(MAX_BODY_SIZE + 1, 2**32))
    if choice == 4:
        return struct.pack("!2sBBI", MAGIC, WIRE_VERSION, 0, rng.randrange(0, 2))
    if choice == 5:
        return good[: rng.randrange(1, len(good))]  # truncated, then the connection ends
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))


def _send_all_then_wait_for_close(sock: socket.socket, data: bytes, rng: random.Random) -> None:
    """Send in random-sized pieces (frames split across reads), then wait until the node has read it all."""
    view = memoryview(data)
    try:
        while view:
            size = rng.randrange(1, 8192)
            sock.sendall(view[:size])
            view = view[size:]
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    except OSError:  # the node closed first (a broken header): it read what it needed
        pass
    finally:
        sock.close()


def test_fuzzed_frames_never_crash_or_change_a_live_node(procs: Callable[..., ProcCluster]) -> None:
    rng = random.Random(20240611)
    ids = ["a", "b", "c"]
    # A longer timeout: the fuzzing loads the machine, and the assertion is "no change at all".
    cluster = procs(ids, election_timeout=0.5)
    cluster.start()
    term, leader = cluster.wait_agreed(timeout=20)
    target = next(i for i in ids if i != leader)
    port = cluster[target].port
    changes_before = {i: len(cluster[i].leader_records()) for i in ids}

    sent = 0
    expected_rejections = 0
    # Many frames per connection: bad bodies do not close the connection.
    for _ in range(20):
        data, refused = _body_frames(rng, set(ids), 500)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        _send_all_then_wait_for_close(sock, data, rng)
        sent += 500
        expected_rejections += refused
    # Broken headers, each on a fresh connection (the node must close it).
    for _ in range(200):
        data = _header_frames(rng)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        _send_all_then_wait_for_close(sock, data, rng)
        sent += 1
        expected_rejections += 1
    assert sent >= 10_000

    assert cluster[target].running, f"the fuzzed node died\n{cluster.describe()}"
    assert {i: len(cluster[i].leader_records()) for i in ids} == changes_before, "a leader view changed"
    assert cluster.agreed(ids) == (term, leader)

    cluster[target].signal(signal.SIGTERM)
    assert cluster[target].wait(10) == 0
    stopped = cluster[target].stopped_record()
    assert stopped is not None
    status, transport = stopped["status"], stopped["transport"]
    assert transport["frames_rejected"] == expected_rejections
    assert status["term"] == term
    assert status["voted_for"] in (None, leader)
    assert status["elections_started"] == 0
    assert_one_leader_per_term(cluster)
