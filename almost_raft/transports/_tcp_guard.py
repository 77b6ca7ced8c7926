"""The incoming side of the TCP transport: accepting, guarding and reading connections.

``Listener`` accepts the connections of one ``TcpTransport``, bounds each one
(the TLS handshake, the first valid frame, the gaps between valid frames),
decodes its frames and feeds the valid messages into ``control``.

A listener has a fixed number of connection slots (``max_connections``) and
must keep them for its peers, whatever else reaches its port.  Every accepted
connection is an ``Incoming`` in the ``ConnectionTable``, which remembers
where it came from and when it last did something useful: carry a valid frame
from a known peer (until then, when it was accepted).

A new connection is admitted when its address has fewer than
``per_address`` connections and the listener fewer than ``total``.  When a
limit is reached, the least recently useful connection in that scope is
evicted to make room, provided it is *evictable*: it has never carried a
valid frame, or not for ``protect`` seconds.  A live peer's connection carries
a frame every heartbeat interval while it leads or follows the leader, so it
is never evicted; connections that only hold a slot are, oldest first.  When
nothing is evictable, the newcomer is refused.

Addresses are counted per IPv4 address and per IPv6 /64 (one host usually has
a whole /64 to choose from).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, final

import anyio
from anyio.abc import SocketAttribute, SocketListener
from anyio.streams.memory import MemoryObjectSendStream

from .._messages import ControlMessage, Message
from ._tcp_io import BROKEN, Connection, loop_clock
from ._wire import FrameReader, WireError, node_id_text

if TYPE_CHECKING:
    from .tcp import TcpTransport

logger = logging.getLogger("almost_raft")

_IPV6_HOST_PREFIX: Final = 64


def describe(exc: BaseException) -> str:
    """An exception as ``Type: message``, for logs."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def certificate_identities(cert: object) -> frozenset[str]:
    """The names a peer certificate (as from ``SSLSocket.getpeercert()``) vouches for.

    These are the subject's common names and the DNS subject-alternative names.
    """
    names: set[str] = set()
    if not isinstance(cert, dict):
        return frozenset()
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str):
                names.add(value)
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS" and isinstance(value, str):
            names.add(value)
    return frozenset(names)


def address_key(host: str) -> str:
    """The key one host's connections are counted under: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, _IPV6_HOST_PREFIX), strict=False))
    return str(ip)


@final
class Incoming:
    """One accepted connection, as the table sees it.

    Attributes:
        key: its address key (``address_key``).
        remote: the peer address, for logs.
        useful_at: when it was accepted, then when it last carried a valid frame from a known peer.
        useful: whether it has carried such a frame.
        scope: cancelled to evict it (set by the listener).
        pending: bytes of an unfinished frame received so far (for logs).
    """

    __slots__ = ("key", "pending", "remote", "scope", "useful", "useful_at")

    def __init__(self, key: str, remote: str, now: float, scope: anyio.CancelScope | None = None) -> None:
        self.key = key
        self.remote = remote
        self.useful_at = now
        self.useful = False
        self.pending = 0
        self.scope = scope


@final
class ConnectionTable:
    """The open incoming connections of one listener, counted per address and in total.

    Args:
        total: at most this many open at once.
        per_address: at most this many from one address key.
        protect: a connection that carried a valid frame less than this long ago is never evicted.
    """

    __slots__ = ("_all", "_by_key", "per_address", "protect", "total")

    def __init__(self, total: int, per_address: int, protect: float) -> None:
        self.total = total
        self.per_address = per_address
        self.protect = protect
        self._all: set[Incoming] = set()
        self._by_key: dict[str, set[Incoming]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def count(self, key: str) -> int:
        """Open connections from *key*."""
        return len(self._by_key.get(key, ()))

    def admit(self, conn: Incoming, now: float) -> tuple[bool, list[Incoming]]:
        """Make room for *conn* and add it.

        Returns:
            ``(admitted, evicted)``: whether *conn* was added, and the
            connections removed (their scopes cancelled) to make room.
        """
        evicted: list[Incoming] = []
        for pool, limit in ((self._by_key.get(conn.key, set()), self.per_address), (self._all, self.total)):
            if len(pool) >= limit:
                victim = self._least_useful(pool, now)
                if victim is None:
                    return False, evicted
                self.remove(victim)
                if victim.scope is not None:
                    victim.scope.cancel()
                evicted.append(victim)
        self._all.add(conn)
        self._by_key.setdefault(conn.key, set()).add(conn)
        return True, evicted

    def _least_useful(self, pool: set[Incoming], now: float) -> Incoming | None:
        best: Incoming | None = None
        for conn in pool:
            if conn.useful and now - conn.useful_at < self.protect:
                continue
            if best is None or conn.useful_at < best.useful_at:
                best = conn
        return best

    def remove(self, conn: Incoming) -> None:
        """Forget *conn* (if still there)."""
        if conn in self._all:
            self._all.discard(conn)
            same = self._by_key[conn.key]
            same.discard(conn)
            if not same:
                del self._by_key[conn.key]


class RateLimitedLog:
    """Logs a recurring inbound problem at most once per interval, with the count of the others.

    The others go to DEBUG, so that nothing an attacker sends can flood the log.
    """

    __slots__ = ("_interval", "_next_at", "_suppressed")

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._next_at = -math.inf
        self._suppressed = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            logger.debug(msg, *args)
            return
        if self._suppressed:
            msg += " (and %d more since the last report)"
            args = (*args, self._suppressed)
        self._suppressed = 0
        self._next_at = now + self._interval
        logger.warning(msg, *args)


@final
class Listener:
    """The incoming side of one ``TcpTransport`` (see the module documentation).

    Args:
        transport: the transport it serves: its settings, counters, peers and task group.
        table: the book of its open connections.
    """

    def __init__(self, transport: TcpTransport, table: ConnectionTable) -> None:
        self._transport = transport
        self._table = table
        self._reject_log = RateLimitedLog()
        self._tls_log = RateLimitedLog()
        self._limit_log = RateLimitedLog()
        self._timeout_log = RateLimitedLog()

    async def accept_loop(
        self, listener: SocketListener, control: MemoryObjectSendStream[ControlMessage | Message]
    ) -> None:
        """Accept connections on *listener* until cancelled, and serve each in its own task."""
        tg = self._transport._task_group()
        raw = listener.extra(SocketAttribute.raw_socket)
        raw.setblocking(False)
        async with listener:
            while True:
                await anyio.wait_readable(raw)
                try:
                    sock, address = raw.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:  # e.g. out of file descriptors: wait, do not spin
                    logger.warning("node %r: accept failed: %s", self._transport.self_id, describe(exc))
                    await anyio.sleep(0.1)
                    continue
                conn = self._admit(address)
                if conn is None:
                    sock.close()
                    continue
                self._transport._stats.connections_accepted += 1
                tg.start_soon(self._serve, sock, conn, control)

    def _admit(self, address: object) -> Incoming | None:
        """Make room for a new connection (``ConnectionTable.admit``), or refuse it (``None``)."""
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        remote = f"{address!r}"
        key = address_key(host)
        now = anyio.current_time()
        conn = Incoming(key, remote, now, anyio.CancelScope())
        table = self._table
        admitted, evicted = table.admit(conn, now)
        for victim in evicted:
            self._transport._stats.connections_evicted += 1
            self._limit_log.warning(
                "node %r: closed an idle connection from %s to make room for one from %s "
                "(%d open, %d from that address)",
                self._transport.self_id,
                victim.remote,
                remote,
                len(table),
                table.count(key),
            )
        if not admitted:
            self._transport._stats.connections_refused += 1
            self._limit_log.warning(
                "node %r: refused a connection from %s: %d open, %d from that address, none idle",
                self._transport.self_id,
                remote,
                len(table),
                table.count(key),
            )
            return None
        return conn

    async def _serve(
        self, sock: socket.socket, conn: Incoming, control: MemoryObjectSendStream[ControlMessage | Message]
    ) -> None:
        transport = self._transport
        stats = transport._stats
        with contextlib.suppress(OSError):  # the TLS handshake's last flight is not held back (Nagle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection(sock, transport.server_ssl_context, server_hostname=None)
        identities: frozenset[str] | None = None
        try:
            assert conn.scope is not None
            with conn.scope:  # cancelled when evicted
                if transport.server_ssl_context is not None:
                    try:
                        with anyio.fail_after(transport.handshake_timeout):
                            await connection.handshake()
                    except (*BROKEN, TimeoutError) as exc:
                        stats.tls_handshake_failures += 1
                        self._tls_log.warning(
                            "node %r: TLS handshake with %s failed: %s", transport.self_id, conn.remote, describe(exc)
                        )
                        return
                    identities = certificate_identities(connection.peer_certificate())
                await self._read_frames(connection, control, conn, identities)
        finally:
            self._table.remove(conn)
            connection.abort()

    def _timed_out(self, conn: Incoming) -> None:
        if conn.useful:
            # Normal for a follower's connection to another follower between elections:
            # it is opened again when needed.
            self._transport._stats.idle_timeouts += 1
            logger.debug(
                "node %r: closed the connection from %s: no valid frame for %.1fs",
                self._transport.self_id,
                conn.remote,
                self._transport.idle_timeout,
            )
        else:
            self._transport._stats.first_frame_timeouts += 1
            self._timeout_log.warning(
                "node %r: closed the connection from %s: no valid frame within %.1fs of connecting (%d bytes pending)",
                self._transport.self_id,
                conn.remote,
                self._transport.first_frame_timeout,
                conn.pending,
            )

    async def _read_frames(
        self,
        connection: Connection,
        control: MemoryObjectSendStream[ControlMessage | Message],
        conn: Incoming,
        identities: frozenset[str] | None,
    ) -> None:
        """Read and deliver frames until the connection ends, or goes without a valid frame for too long.

        The first valid frame from a known peer must come within
        ``first_frame_timeout``, and then one at least every ``idle_timeout``:
        the timer is not moved for every frame, it is checked when it fires.
        """
        transport = self._transport
        sink = _FrameSink(self, control, conn, identities, loop_clock())
        deadline = anyio.current_time() + transport.first_frame_timeout
        while True:
            with anyio.CancelScope(deadline=deadline) as timer:
                try:
                    await connection.read_loop(sink.feed)
                except anyio.ClosedResourceError:
                    return
            if not timer.cancelled_caught:
                break
            if conn.useful:
                deadline = conn.useful_at + transport.idle_timeout
            if anyio.current_time() >= deadline:
                self._timed_out(conn)
                return
        if sink.reader.pending and not sink.failed:
            transport._stats.frames_rejected += 1
            self._reject_log.warning(
                "node %r: connection from %s ended inside a frame (%d bytes)",
                transport.self_id,
                conn.remote,
                sink.reader.pending,
            )


@final
class _FrameSink:
    """Decodes what one incoming connection delivers and passes each valid message on.

    Its ``feed`` runs from the event loop's reader callback on asyncio (see
    ``Connection.read_loop``), so it takes the time from *clock*, never from anyio.
    """

    __slots__ = ("_clock", "_conn", "_control", "_identities", "_listener", "_warned_mismatch", "failed", "reader")

    def __init__(
        self,
        listener: Listener,
        control: MemoryObjectSendStream[ControlMessage | Message],
        conn: Incoming,
        identities: frozenset[str] | None,
        clock: Callable[[], float],
    ) -> None:
        self._listener = listener
        self._control = control
        self._conn = conn
        self._identities = identities
        self._clock = clock
        self._warned_mismatch = False
        self.reader = FrameReader()
        self.failed = False

    def feed(self, data: bytes) -> bool:
        """Take *data*; deliver the frames it completes.  ``False``: close the connection."""
        listener = self._listener
        transport = listener._transport
        stats = transport._stats
        conn = self._conn
        reader = self.reader
        reader.feed(data)
        now = self._clock()
        while True:
            try:
                item = reader.next()
            except WireError as exc:
                # The frame boundary is lost: this connection cannot be read further.
                stats.frames_rejected += 1
                self.failed = True
                listener._reject_log.warning(
                    "node %r: closing connection from %s: %s", transport.self_id, conn.remote, exc
                )
                return False
            if item is None:
                conn.pending = reader.pending
                return True
            if isinstance(item, WireError):
                stats.frames_rejected += 1
                listener._reject_log.warning(
                    "node %r: dropped a frame from %s: %s", transport.self_id, conn.remote, item
                )
                continue
            sender = item.sender
            identities = self._identities
            if identities is not None and node_id_text(sender) not in identities:
                stats.identity_mismatches += 1
                if not self._warned_mismatch:
                    self._warned_mismatch = True
                    listener._reject_log.warning(
                        "node %r: dropping messages from %s claiming sender %r; its certificate names %s",
                        transport.self_id,
                        conn.remote,
                        sender,
                        sorted(identities) or "nobody",
                    )
                continue
            stats.frames_received += 1
            node = transport._nodes.get(sender)
            if node is not None:
                # Only a known peer's frame keeps a connection open and protected.
                conn.useful = True
                conn.useful_at = now
                node._heard(item, now)
            try:
                self._control.send_nowait(item)
            except anyio.WouldBlock:
                stats.control_overflows += 1
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.failed = True
                return False
