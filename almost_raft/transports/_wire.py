"""The wire format of the TCP transport, and its strict decoder.

A frame is an 8-byte header and a UTF-8 JSON body::

    offset  size  field
    0       2     magic    b"AR" (0x41 0x52)
    2       1     version  1
    3       1     flags    0 (reserved: anything else is refused)
    4       4     length   body size in bytes, unsigned big-endian, 2..MAX_BODY_SIZE
    8       n     body     one JSON object, UTF-8

The body names its message kind and carries every field of that message, and
nothing else: ``{"kind":"heartbeat","term":7,"leader_id":"a","seq":12}``.
Every field is required (no defaults on the wire), except one optional field:
a heartbeat's ``successor`` (a node id) is present when the leader names a
designated successor and absent when it names none (never ``null``); a
decoder of an earlier release refuses a heartbeat that carries it (an unknown
key), so a mixed cluster must run with ``successor=False``.  Terms and sequence numbers
are JSON integers in ``0..2**63-1``, node ids are JSON strings of 1 to 255
UTF-8 bytes or JSON integers in the signed 64-bit range, flags are ``true`` or
``false``.  Duplicate keys, unknown keys, nested arrays or objects, floats,
``NaN``/``Infinity``, ``null``, invalid UTF-8 and lone surrogates are refused.

Everything malformed raises ``WireError``, and nothing else: the decoder never
returns a half-built message and never lets another exception out.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Final, NoReturn, final

from .._messages import Heartbeat, HeartbeatResponse, Message, NodeId, RequestVote, TimeoutNow, VoteResponse

MAGIC: Final = b"AR"
"""The first two bytes of every frame."""

WIRE_VERSION: Final = 1
"""The version this module speaks; a frame of any other version is refused."""

HEADER_SIZE: Final = 8
"""Bytes in a frame header."""

MAX_BODY_SIZE: Final = 4096
"""The largest body accepted, in bytes (a real message is under 600)."""

MAX_ID_BYTES: Final = 255
"""The longest string node id accepted, in UTF-8 bytes."""

_MAX_U63: Final = 2**63 - 1
_MIN_I64: Final = -(2**63)
_HEADER: Final = struct.Struct("!2sBBI")


@final
class WireError(ValueError):
    """A frame that is not a valid message: truncated, oversized, of another
    version, not JSON, of an unknown kind, with missing, extra or mistyped
    fields, or with values the message refuses.

    Attributes:
        fatal: ``True`` when the header is bad, so the frame boundary is lost
            and the connection cannot be read further; ``False`` when only the
            body is bad and the next frame can still be read.
    """

    def __init__(self, reason: str, *, fatal: bool = False) -> None:
        super().__init__(reason)
        self.fatal = fatal


# kind -> (class, ((field, checker), ...)) in the dataclass's field order
_INT: Final = "int"
_ID: Final = "id"
_BOOL: Final = "bool"

_KINDS: Final[dict[str, tuple[Callable[..., Message], tuple[tuple[str, str], ...]]]] = {
    "request_vote": (
        RequestVote,
        (("term", _INT), ("candidate_id", _ID), ("pre_vote", _BOOL), ("transfer", _BOOL)),
    ),
    "vote_response": (
        VoteResponse,
        (("term", _INT), ("voter_id", _ID), ("granted", _BOOL), ("pre_vote", _BOOL)),
    ),
    "heartbeat": (Heartbeat, (("term", _INT), ("leader_id", _ID), ("seq", _INT))),
    "heartbeat_response": (
        HeartbeatResponse,
        (("term", _INT), ("follower_id", _ID), ("success", _BOOL), ("seq", _INT)),
    ),
    "timeout_now": (TimeoutNow, (("term", _INT), ("leader_id", _ID))),
}
_KIND_OF: Final[dict[type, str]] = {cls: kind for kind, (cls, _) in _KINDS.items()}  # type: ignore[misc]

# kind -> optional fields, after the required ones in the dataclass's field
# order; present on the wire only when not None.
_OPTIONAL: Final[dict[str, tuple[tuple[str, str], ...]]] = {"heartbeat": (("successor", _ID),)}


def _fail(reason: str, *, fatal: bool = False) -> NoReturn:
    raise WireError(reason, fatal=fatal)


# ----------------------------------------------------------------- encoding


def encode_message(message: Message) -> bytes:
    """Return the frame (header and body) that carries *message*.

    Raises:
        WireError: *message* is not a peer message, or a value cannot be put
            on the wire (an id too long, a number out of range).
    """
    kind = _KIND_OF.get(type(message))
    if kind is None:
        _fail(f"cannot encode {type(message).__name__}: not a peer message")
    body: dict[str, object] = {"kind": kind}
    for name, checker in _KINDS[kind][1]:
        value = getattr(message, name)
        _check_value(kind, name, checker, value)
        body[name] = value
    for name, checker in _OPTIONAL.get(kind, ()):
        value = getattr(message, name)
        if value is not None:
            _check_value(kind, name, checker, value)
            body[name] = value
    try:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        _fail(f"cannot encode {kind}: {exc}")
    if len(data) > MAX_BODY_SIZE:
        _fail(f"cannot encode {kind}: body of {len(data)} bytes exceeds {MAX_BODY_SIZE}")
    return _HEADER.pack(MAGIC, WIRE_VERSION, 0, len(data)) + data


# ----------------------------------------------------------------- decoding


def decode_header(header: bytes) -> int:
    """Check a frame header and return the length of the body that follows.

    Raises:
        WireError: (always ``fatal``) wrong size, magic, version or flags, or
            a length outside ``2..MAX_BODY_SIZE``.
    """
    if len(header) != HEADER_SIZE:
        _fail(f"truncated header: {len(header)} of {HEADER_SIZE} bytes", fatal=True)
    magic, version, flags, length = _HEADER.unpack(header)
    if magic != MAGIC:
        _fail(f"bad magic {magic!r}: not an almost_raft frame", fatal=True)
    if version != WIRE_VERSION:
        _fail(f"unsupported wire version {version} (this node speaks {WIRE_VERSION})", fatal=True)
    if flags != 0:
        _fail(f"reserved flags byte is {flags:#04x}, must be 0", fatal=True)
    if length > MAX_BODY_SIZE:
        _fail(f"body of {length} bytes exceeds the maximum of {MAX_BODY_SIZE}", fatal=True)
    if length < 2:
        _fail(f"body of {length} bytes cannot hold a JSON object", fatal=True)
    return int(length)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            _fail(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_float(text: str) -> NoReturn:
    _fail(f"floating-point number {text[:20]!r} where only integers are allowed")


def _no_constant(text: str) -> NoReturn:
    _fail(f"{text} is not allowed")


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_float=_no_float, parse_constant=_no_constant, strict=True
)


def _check_value(kind: str, name: str, checker: str, value: object) -> None:
    where = f"{kind}.{name}"
    if checker == _BOOL:
        if type(value) is not bool:
            _fail(f"{where} must be true or false, got {_json_type(value)}")
    elif checker == _INT:
        if type(value) is not int:
            _fail(f"{where} must be an integer, got {_json_type(value)}")
        if not 0 <= value <= _MAX_U63:
            _fail(f"{where} must be in 0..2**63-1, got {value}")
    elif type(value) is int:
        if not _MIN_I64 <= value <= _MAX_U63:
            _fail(f"{where} must be in the signed 64-bit range, got {value}")
    elif type(value) is str:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            _fail(f"{where} is not valid Unicode (lone surrogate)")
        if not 1 <= size <= MAX_ID_BYTES:
            _fail(f"{where} must be 1..{MAX_ID_BYTES} UTF-8 bytes, got {size}")
    else:
        _fail(f"{where} must be a string or an integer node id, got {_json_type(value)}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def decode_body(body: bytes) -> Message:
    """Decode a frame body (after ``decode_header``) into a message.

    Raises:
        WireError: (never ``fatal``) the body is not one of the documented
            JSON objects, or a value is refused by the message.
    """
    if len(body) > MAX_BODY_SIZE:
        _fail(f"body of {len(body)} bytes exceeds the maximum of {MAX_BODY_SIZE}")
    try:
        text = bytes(body).decode("utf-8", "strict")
    except UnicodeDecodeError as exc:
        _fail(f"body is not valid UTF-8: {exc.reason} at byte {exc.start}")
    try:
        data = _DECODER.decode(text)
    except WireError:
        raise
    except RecursionError:
        _fail("body is nested too deeply")
    except ValueError as exc:  # json.JSONDecodeError, and int() digit limits
        _fail(f"body is not valid JSON: {exc}")
    if type(data) is not dict:
        _fail(f"body must be a JSON object, got {_json_type(data)}")
    kind = data.get("kind")
    if type(kind) is not str:
        _fail(f"'kind' must be a string, got {_json_type(kind)}")
    spec = _KINDS.get(kind)
    if spec is None:
        _fail(f"unknown message kind {kind[:40]!r}")
    cls, fields = spec
    optional = _OPTIONAL.get(kind, ())
    expected = {"kind", *(name for name, _ in fields)}
    keys = data.keys() - {name for name, _ in optional} if optional else data.keys()
    if keys != expected:
        missing = sorted(expected - keys)
        extra = sorted(k[:40] for k in keys - expected)
        _fail(f"{kind}: missing fields {missing}, unknown fields {extra}")
    values: list[object] = []
    for name, checker in fields:
        value = data[name]
        _check_value(kind, name, checker, value)
        values.append(value)
    for name, checker in optional:
        value = data.get(name)
        if name in data:
            _check_value(kind, name, checker, value)  # null is refused: absent means "none"
        values.append(value)
    try:
        return cls(*values)
    except (TypeError, ValueError) as exc:
        _fail(f"{kind}: {exc}")


def decode_frame(frame: bytes) -> Message:
    """Decode exactly one whole frame (header and body).

    Raises:
        WireError: the frame is malformed, truncated or followed by extra bytes.
    """
    length = decode_header(bytes(frame[:HEADER_SIZE]))
    body = frame[HEADER_SIZE:]
    if len(body) < length:
        _fail(f"truncated frame: body has {len(body)} of {length} bytes", fatal=True)
    if len(body) > length:
        _fail(f"{len(body) - length} bytes after the end of the frame", fatal=True)
    return decode_body(bytes(body))


@final
class FrameReader:
    """Splits a byte stream into decoded messages, for a receiving connection.

    Feed it what the socket returns; ``next()`` gives the next message, a
    ``WireError`` for a bad body (the stream stays usable), or ``None`` when
    more bytes are needed.  A bad header raises a ``fatal`` ``WireError``: the
    frame boundary is lost and the connection must be closed.
    """

    __slots__ = ("_buffer", "_need")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._need: int | None = None  # body length once the header was read

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame (header included); non-zero at EOF means a truncated frame."""
        return len(self._buffer) + (HEADER_SIZE if self._need is not None else 0)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    def next(self) -> Message | WireError | None:
        """Return the next message, a non-fatal ``WireError``, or ``None`` (need more bytes).

        Raises:
            WireError: a ``fatal`` one, for a bad header.
        """
        buffer = self._buffer
        if self._need is None:
            if len(buffer) < HEADER_SIZE:
                # A wrong magic is reported as soon as it shows, not after 8 bytes.
                if buffer and not MAGIC.startswith(bytes(buffer[:2])):
                    decode_header(bytes(buffer[:2]).ljust(HEADER_SIZE, b"\0"))
                return None
            self._need = decode_header(bytes(buffer[:HEADER_SIZE]))
            del buffer[:HEADER_SIZE]
        need = self._need
        if len(buffer) < need:
            return None
        body = bytes(buffer[:need])
        del buffer[:need]
        self._need = None
        try:
            return decode_body(body)
        except WireError as exc:
            return exc


def node_id_text(node_id: NodeId) -> str:
    """The text form of a node id, as matched against TLS certificate names."""
    return str(node_id)
