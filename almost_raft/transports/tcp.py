"""A TCP transport on non-blocking sockets (``_tcp_io``), with optional (mutual) TLS.

``TcpTransport`` owns one node's network side: a listener that decodes the
frames of ``_wire`` and feeds the messages into ``control``, and one
``TcpNode`` per peer.  Each direction of each pair of nodes has its own
connection: a node writes only on the connections it opened and reads only on
the ones it accepted, so a message and its answer travel on two connections.

A ``TcpNode`` never blocks the election loop and never waits for the peer:
the election calls ``send_message_nowait`` from its own task, which writes
the frame into an open connection's socket buffer at once, in that call (no
task switch; a leader's ``TimeoutNow`` is on the wire before anything else
happens in its process), or else puts it in a bounded queue (the oldest frame
is dropped when it is full: election messages are superseded by newer ones)
for a writer task.  A message sent unchanged to every peer (a heartbeat) is
encoded once.  The writer connects lazily, on the first message, and after a failure
waits a capped exponential backoff with jitter before the next attempt.  A
message that arrives from a peer cuts that peer's backoff short: the peer is
evidently back.  A watcher reads each outgoing connection, on which nothing is
ever sent back, so a peer that closed or crashed is noticed at once, before
the next message is written into a dead connection and lost; the election
hears of it too, as ``PeerDisconnected(peer_id)`` in ``control``, so the
successor a dead leader named stands one round trip sooner.  Connection
trouble is logged once per change of state, not once per retry.

With TLS, both sides present certificates signed by a common CA.  The
connecting side checks that the listener's certificate names the peer it
meant to reach (``server_name``, by default ``str(peer_id)``); the listener
takes the names in the connecting side's certificate (subject common name and
DNS subject-alternative names) as its identity, and drops and counts every
message whose claimed sender is not among them.

Healing after a partition.  A connection opened before a partition holds the
frames written during it in TCP's retransmission queue, and TCP retries them
with an exponential backoff: after the heal the peer hears nothing until the
next retransmission, seconds later.  New connections made during the
partition fare no better: Linux resends a lost SYN after 1 s, then 3 s.  With
``T`` the ``election_timeout`` the transport was given:

- ``TCP_USER_TIMEOUT`` is ``user_timeout`` (``2T``): the kernel closes a
  connection whose data stayed unacknowledged that long.  It is the precise
  test for *this* direction: the peer's answers come on its own connection,
  so hearing from the peer says nothing about whether ours is stuck, and only
  the kernel knows whether what we wrote was acknowledged.  Nor does it
  misfire under load: a slow peer's kernel still acknowledges at once.
- Silence: while the peer answers none of our requests (``RequestVote``,
  ``Heartbeat``, ``TimeoutNow``), a connection attempt still pending after
  ``silence_timeout`` (``T``) is abandoned for a new one, at most one per
  ``silence_timeout``, so a fresh SYN goes out at least every ``T``.  When a
  silent peer is heard again, a pending attempt is restarted and a backoff
  cut short at once: the first frame through, in either direction, heals the
  other.
- An open connection is replaced for silence only after ``max(1 s, 4 x
  silence_timeout)``, when the silence is also logged: for a middlebox that
  acknowledges and drops, and for platforms without ``TCP_USER_TIMEOUT``.
  Replacing sooner does not make a slow peer answer sooner, and under load the
  churn would only slow everything down.

So after a heal a connection carries the leader's next heartbeat within about
``T`` plus a round trip, inside the ``T_max + 2h`` an election allows (given
that the network resolves addresses by then).  Answers (``VoteResponse``,
``HeartbeatResponse``) expect nothing back and never start the silence clock.
The choice of ``TCP_USER_TIMEOUT`` for open connections and of silence for
attempts is argued in the README ("Healing after a partition").

Guarding the listener.  Every incoming connection must deliver a complete,
valid frame from a known peer within ``first_frame_timeout`` of being
accepted (after the TLS handshake, itself bounded by ``handshake_timeout``),
and then one at least every ``idle_timeout``; bytes that do not complete a
frame do not count, so a trickle cannot hold a connection.  At most
``max_connections_per_address`` come from one address (an IPv6 /64), and at
most ``max_connections`` in all; at either limit the least recently useful
connection that is not a live peer's is evicted for the newcomer (see
``_tcp_guard``).  Trouble is counted in ``TcpStats`` and logged at most once
per 5 seconds per kind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import random
import socket
import ssl
from collections import deque
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Final, final

import anyio
from anyio.abc import SocketAttribute, SocketListener, TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from .._errors import raise_single
from .._messages import (
    ControlMessage,
    Heartbeat,
    HeartbeatResponse,
    Message,
    NodeId,
    PeerDisconnected,
    RequestVote,
    TimeoutNow,
    VoteResponse,
    check_node_id,
)
from ._tcp_guard import ConnectionTable, Listener, describe
from ._tcp_io import BROKEN, Connection, connect, ended_by_peer
from ._wire import encode_message, node_id_text

logger = logging.getLogger("almost_raft")

_STALE_AFTER: Final = 1.0
"""A peer silent this long (or 4 x ``silence_timeout``, if longer) gets a new connection even when the
old one looks fine, and is reported; shorter silences are left to the kernel and logged at DEBUG."""
_REQUESTS: Final = (RequestVote, Heartbeat, TimeoutNow)
"""The messages a live peer answers (``TimeoutNow`` with a ``RequestVote``): they start the silence clock."""
_ANSWERS: Final = (VoteResponse, HeartbeatResponse)
"""The answers, which stop it (with a ``RequestVote`` flagged as a transfer)."""


@final
@dataclass(slots=True)
class TcpStats:
    """Counters of one ``TcpTransport``; each only grows.

    Attributes:
        connections_accepted: incoming connections taken.
        connections_refused: incoming connections closed at once: ``max_connections`` or
            ``max_connections_per_address`` reached, and no connection to evict.
        connections_evicted: open incoming connections closed to make room for a new one
            (they had not carried a valid frame for a while, or never).
        first_frame_timeouts: incoming connections closed because no valid frame came
            within ``first_frame_timeout`` (or the TLS handshake and that).
        idle_timeouts: incoming connections closed after ``idle_timeout`` without a valid frame.
        tls_handshake_failures: incoming connections whose TLS handshake failed
            (no certificate, a certificate from another CA, not TLS at all, too slow).
        frames_received: valid messages decoded from incoming connections.
        frames_rejected: malformed frames (``WireError``) received.
        identity_mismatches: valid messages dropped because their claimed
            sender is not named by the connection's TLS certificate.
        control_overflows: valid messages dropped because ``control`` was full
            (and ``PeerDisconnected`` notices that found it full).
        disconnect_notices: ``PeerDisconnected`` notices put into ``control``: an
            outgoing connection closed or reset by the peer's side.
        connects: outgoing connections established.
        connect_failures: outgoing connection attempts that failed.
        disconnects: outgoing connections lost (closed by the peer, or a send failed,
            or replaced because the peer was silent).
        silence_reconnects: outgoing connection attempts restarted, or connections replaced,
            because the peer answered none of our requests for a while (or came back after that).
        messages_queued: messages accepted by ``TcpNode.send_message``.
        messages_sent: messages written to a connection.
        messages_dropped: queued messages lost: the oldest dropped from a full
            queue, or lost with a broken connection or at shutdown.
    """

    connections_accepted: int = 0
    connections_refused: int = 0
    connections_evicted: int = 0
    first_frame_timeouts: int = 0
    idle_timeouts: int = 0
    tls_handshake_failures: int = 0
    frames_received: int = 0
    frames_rejected: int = 0
    identity_mismatches: int = 0
    control_overflows: int = 0
    disconnect_notices: int = 0
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    silence_reconnects: int = 0
    messages_queued: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def make_tls_contexts(
    certfile: str, keyfile: str, cafile: str, *, server_name_check: bool = True
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Build the ``(server, client)`` SSL contexts for mutual TLS.

    Both sides present *certfile* and accept only certificates signed by
    *cafile*; the listener requires a client certificate.

    Args:
        certfile: this node's certificate (PEM), naming the node id in its
            subject common name or a DNS subject-alternative name.
        keyfile: its private key (PEM).
        cafile: the CA certificate(s) (PEM) that sign every node's certificate.
        server_name_check: the connecting side checks that the listener's
            certificate names the peer it meant to reach.

    Raises:
        OSError, ssl.SSLError: a file is missing or invalid.
    """
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cafile)
    server.load_cert_chain(certfile, keyfile)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    client.load_cert_chain(certfile, keyfile)
    client.check_hostname = server_name_check
    return server, client


def _tune_socket(sock: socket.socket, user_timeout: float) -> None:
    """No Nagle delay; unacknowledged data for *user_timeout* closes the connection; keepalive when idle."""
    options = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    user_timeout_ms = max(1, round(user_timeout * 1000))
    for name, value in (
        ("TCP_KEEPIDLE", 10),
        ("TCP_KEEPINTVL", 5),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", user_timeout_ms),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        with contextlib.suppress(OSError):  # a platform without the option
            sock.setsockopt(level, option, value)


@final
class TcpNode:
    """A peer reached over TCP: a ``Node`` for ``RaftElectionState``.

    Build it with ``TcpTransport.node``.  ``send_message`` never waits for the
    network; see the module documentation for how the frames are sent.
    """

    def __init__(self, transport: TcpTransport, node_id: NodeId, host: str, port: int, server_name: str | None) -> None:
        self._transport = transport
        self._node_id = node_id
        self.host = host
        self.port = port
        self.server_name = server_name if server_name is not None else node_id_text(node_id)
        self._queue: deque[bytes] = deque()
        self._wakeup: anyio.Event | None = None
        self._conn: Connection | None = None
        self._started = False
        self._closing = False
        self._done: anyio.Event | None = None
        self._failures = 0
        self._retry_at = -math.inf
        self._state = "new"  # new | connected | disconnected | failing | closed (for repr and logs)
        self._trouble = False  # "unreachable" or "does not answer" was logged; "reachable again" not yet
        # Silence (see the module documentation): when our oldest unanswered request
        # went out, when the current connection or attempt began, and the attempt's
        # scope while it is still in its TCP phase (a lost SYN is worth retrying).
        self._unanswered_since: float | None = None
        self._attempt_at = -math.inf
        self._attempt_scope: anyio.CancelScope | None = None
        self._heard_at = -math.inf  # the last valid frame from the peer, on any connection

    def __repr__(self) -> str:
        return f"TcpNode({self._node_id!r}, {self.host}:{self.port}, {self._state})"

    @property
    def node_id(self) -> NodeId:
        """The id of the peer this node reaches."""
        return self._node_id

    @property
    def connected(self) -> bool:
        """Whether an outgoing connection to the peer is open now."""
        return self._conn is not None

    @property
    def queued(self) -> int:
        """Frames waiting to be sent."""
        return len(self._queue)

    async def send_message(self, message: Message) -> None:
        """Send *message* to the peer, or queue it: ``send_message_nowait``, for callers that await.

        Raises:
            WireError: *message* cannot be encoded.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        self.send_message_nowait(message)

    def send_message_nowait(self, message: Message) -> None:
        """Send *message* to the peer without waiting (the optional fast path of ``Node``).

        The election calls this from its own task.  When a connection is open
        and nothing is queued, the frame is written to its socket at once, in
        this call (the kernel buffers it); otherwise it joins this peer's
        queue for the writer task, which connects first if need be.  When the
        queue is full the oldest frame is dropped and counted.  After the
        transport closed, messages are dropped and counted.

        Raises:
            WireError: *message* cannot be encoded.
        """
        transport = self._transport
        frame = transport._encode(message)
        self._watch_silence(message)
        conn = self._conn
        if conn is None or self._queue or conn.pending or self._closing or transport._closed:
            self._enqueue(frame)
            return
        transport._stats.messages_queued += 1
        self._write(conn, [frame])

    def _enqueue(self, frame: bytes) -> None:
        transport = self._transport
        stats = transport._stats
        if self._closing or transport._closed:
            stats.messages_dropped += 1
            return
        stats.messages_queued += 1
        self._queue.append(frame)
        self._trim_queue()
        if not self._started:
            self._started = True
            self._done = anyio.Event()
            transport._task_group().start_soon(
                self._run, name=f"almost_raft tcp {transport.self_id!r}->{self._node_id!r}"
            )
        self._wake()

    def _trim_queue(self) -> None:
        excess = len(self._queue) - self._transport.queue_size
        for _ in range(excess):
            self._queue.popleft()
        if excess > 0:
            self._transport._stats.messages_dropped += excess

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    # --------------------------------------------------------------- silence

    def _watch_silence(self, message: Message) -> None:
        """Before sending *message*: replace a connection attempt, or a connection, to a silent peer.

        A request starts the silence clock unless one is already running; only
        an answer from the peer stops it (``_heard``).  An attempt still pending
        after ``silence_timeout`` has most likely lost its SYN: it is restarted.
        An open connection is left to the kernel (``user_timeout``) and only
        replaced after ``_stale_after`` of silence: replacing a connection that
        works does not make a slow peer answer sooner, and under load it would
        only add work.
        """
        now = anyio.current_time()
        since = self._unanswered_since
        if since is None:
            if isinstance(message, _REQUESTS):
                self._unanswered_since = now
            return
        silent_for = now - since
        transport = self._transport
        wait = transport.silence_timeout if self._conn is None else self._stale_after()
        if silent_for >= wait and now - self._attempt_at >= wait:
            self._replace(f"no answer for {silent_for:.2f}s", now)
        if not self._trouble and silent_for >= self._stale_after():
            self._report_trouble(
                "does not answer (no answer for %.2fs); reconnecting until it does",
                silent_for,
            )

    def _stale_after(self) -> float:
        """How long a silent peer's open connection is trusted (and the silence not reported)."""
        return max(_STALE_AFTER, 4 * self._transport.silence_timeout)

    def _replace(self, why: str, now: float) -> None:
        """Give up the current connection or connection attempt, and start a new one at once."""
        conn = self._conn
        scope = self._attempt_scope
        if self._closing or self._transport._closed:
            return
        if conn is None and scope is None:
            return  # waiting out a backoff (at most backoff_max): nothing to replace
        self._transport._stats.silence_reconnects += 1
        logger.debug("node %r: peer %r: connection replaced: %s", self._transport.self_id, self._node_id, why)
        if conn is not None:
            self._forget(conn, why, quiet=True)
            conn.abort()
        elif scope is not None:
            scope.cancel()
        self._attempt_at = now  # at most one replacement per silence_timeout
        self._retry_at = -math.inf
        self._wake()

    def _heard(self, message: Message, now: float) -> None:
        """A valid frame came from the peer (on any connection).

        Any frame shows that the peer is up: there is no point waiting out a
        backoff, and if nothing at all had come from it for ``silence_timeout``
        (a partition just healed), a connection attempt made while it was
        silent is restarted at once.  Only an answer shows that our own frames
        reach it, and stops the silence clock.
        """
        back = now - self._heard_at >= self._transport.silence_timeout
        self._heard_at = now
        since = self._unanswered_since
        if isinstance(message, _ANSWERS) or (isinstance(message, RequestVote) and message.transfer):
            self._unanswered_since = None
            self._report_recovery()
        if self._conn is None:
            if back and since is not None and self._attempt_scope is not None:
                self._replace("the peer is heard again after a silence", now)
            if self._failures:
                self._retry_at = -math.inf  # it is up: stop waiting out the backoff
                self._wake()

    def _close(self) -> None:
        self._closing = True
        self._wake()

    # ---------------------------------------------------------------- writer

    async def _run(self) -> None:
        try:
            try:
                await self._send_loop()
            except anyio.get_cancelled_exc_class():
                # Cancelled with the transport (its owner was cancelled): what is
                # queued still gets flush_timeout to go out, a hand-over above all.
                transport = self._transport
                if (self._queue or (self._conn is not None and self._conn.pending)) and not transport._flushed:
                    self._closing = True
                    with anyio.move_on_after(transport.flush_timeout, shield=True):
                        await self._send_loop()
                raise
        finally:
            if self._queue:
                self._transport._stats.messages_dropped += len(self._queue)
                self._queue.clear()
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.abort()
            self._state = "closed"
            assert self._done is not None
            self._done.set()

    async def _send_loop(self) -> None:
        """Connect, write what is queued, flush; return once closing and everything is written."""
        while True:
            conn = self._conn
            if not self._queue and (conn is None or not conn.pending):
                if self._closing:
                    return  # everything written: the kernel sends it before the FIN
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            if conn is None:
                now = anyio.current_time()
                if now < self._retry_at:
                    if self._closing:
                        return  # no reconnecting just to flush
                    self._wakeup = anyio.Event()
                    with anyio.move_on_after(self._retry_at - now):
                        await self._wakeup.wait()
                    continue
                await self._connect()
                continue
            if conn.pending:
                try:
                    await conn.flush()
                except BROKEN as exc:
                    self._drop(conn, f"send failed: {describe(exc)}", peer_gone=ended_by_peer(exc))
                continue
            frames = list(self._queue)
            self._queue.clear()
            self._write(conn, frames)

    def _write(self, conn: Connection, frames: list[bytes]) -> None:
        """Write *frames* to *conn* now; the writer task flushes what the kernel did not take.

        A write that fails wrote nothing: the frames go back to the queue, for
        the next connection, and the broken one is dropped.
        """
        try:
            conn.write(frames[0] if len(frames) == 1 else b"".join(frames))
        except BROKEN as exc:
            self._queue.extendleft(reversed(frames))
            self._trim_queue()
            self._drop(conn, f"send failed: {describe(exc)}", peer_gone=ended_by_peer(exc))
            return
        self._transport._stats.messages_sent += len(frames)
        if conn.pending:
            self._wake()

    async def _connect(self) -> None:
        transport = self._transport
        stats = transport._stats
        sock: socket.socket | None = None
        conn: Connection | None = None
        self._attempt_at = anyio.current_time()
        try:
            with anyio.fail_after(transport.connect_timeout):
                # Resolve first: only the TCP handshake may be restarted (a slow
                # resolver must not make every attempt look like a lost SYN).
                addresses = await _resolve(self.host, self.port)
                self._attempt_at = anyio.current_time()
                self._attempt_scope = attempt = anyio.CancelScope()
                with attempt:  # cancelled by _replace while the SYN may have been lost
                    sock = await _connect_any(addresses, self.port, transport.user_timeout)
                self._attempt_scope = None
                if attempt.cancelled_caught:
                    if sock is not None:
                        sock.close()
                    return  # replaced: the next attempt starts at once, with no backoff
                assert sock is not None
                conn = Connection(sock, transport.client_ssl_context, server_hostname=self.server_name)
                await conn.handshake()
        except (*BROKEN, TimeoutError) as exc:
            if conn is not None:
                conn.abort()
            elif sock is not None:
                sock.close()
            stats.connect_failures += 1
            self._failures += 1
            # Capped exponential backoff, with jitter so that peers do not retry in step.
            delay = min(transport.backoff_max, transport.backoff_initial * 2 ** (self._failures - 1))
            self._retry_at = anyio.current_time() + delay * (0.5 + 0.5 * transport._rng.random())
            self._state = "failing"
            self._report_trouble("unreachable (cannot connect: %s); retrying with backoff", describe(exc))
            return
        except BaseException:
            if conn is not None:
                conn.abort()
            elif sock is not None:
                sock.close()
            raise
        finally:
            self._attempt_scope = None
        stats.connects += 1
        self._failures = 0
        self._retry_at = -math.inf
        self._conn = conn
        transport._task_group().start_soon(self._watch, conn)
        self._state = "connected"
        if self._unanswered_since is None:
            self._report_recovery()
        # else: it is back when it answers (``_heard``), not merely when it accepts a connection.
        logger.debug("node %r: connected to peer %r at %s:%d", transport.self_id, self._node_id, self.host, self.port)

    async def _watch(self, conn: Connection) -> None:
        """Notice at once when the peer closes: nothing is ever sent back on this connection."""
        why = ""

        def unexpected(data: bytes) -> bool:
            nonlocal why
            why = f"the peer sent {len(data)} unexpected bytes"
            return False

        try:
            await conn.read_loop(unexpected)
        except anyio.ClosedResourceError:
            return  # given up by this side
        finally:
            conn.abort()  # this task waited on the socket: it closes it
        self._drop(conn, why or conn.error or "closed by the peer", peer_gone=conn.ended_by_peer)

    def _forget(self, conn: Connection, why: str, *, quiet: bool = False) -> bool:
        """Stop using *conn* (if it is the current one); the caller aborts it.

        *quiet*: the peer is fine (a stale connection is being replaced), log at DEBUG only.
        """
        if self._conn is not conn:
            return False
        self._conn = None
        self._transport._stats.disconnects += 1
        self._state = "disconnected"
        if quiet or self._trouble:
            logger.debug("node %r: peer %r: connection closed: %s", self._transport.self_id, self._node_id, why)
        else:
            logger.info(
                "node %r: connection to peer %r at %s:%d ended: %s",
                self._transport.self_id,
                self._node_id,
                self.host,
                self.port,
                why,
            )
        return True

    def _drop(self, conn: Connection, why: str, *, peer_gone: bool) -> None:
        """Stop using *conn*, broken or closed by the peer; the next message reconnects at once.

        *peer_gone*: the peer's side ended the connection with end-of-file or
        a reset (its process most likely ended; not a timeout, which a
        partition causes), reported once (``PeerDisconnected``) to the election: if the peer
        was the leader and named this node its successor, it stands one round
        trip sooner.  Backoff applies only to failed connection attempts.
        """
        if not self._forget(conn, why):
            return
        conn.abort()
        if peer_gone:
            self._transport._report_disconnected(self._node_id)
        if self._queue:
            self._wake()

    def _report_trouble(self, what: str, *args: object) -> None:
        """Log once that the peer is unreachable or silent; the rest goes to DEBUG until it recovers."""
        me = self._transport.self_id
        if self._trouble:
            logger.debug("node %r: peer %r at %s:%d " + what, me, self._node_id, self.host, self.port, *args)
            return
        self._trouble = True
        logger.warning(
            "node %r: peer %r at %s:%d " + what + ", logged again when it changes",
            me,
            self._node_id,
            self.host,
            self.port,
            *args,
        )

    def _report_recovery(self) -> None:
        if self._trouble:
            self._trouble = False
            me = self._transport.self_id
            logger.warning("node %r: peer %r at %s:%d is reachable again", me, self._node_id, self.host, self.port)


async def _resolve(host: str, port: int) -> list[str]:
    """The addresses of *host*, in the resolver's order of preference (an IP address is its own)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [host]
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _connect_any(addresses: list[str], port: int, user_timeout: float) -> socket.socket:
    """Connect to the first of *addresses* that accepts; raise the last error if none does."""
    error: OSError | None = None
    for address in addresses:
        try:
            return await connect(address, port, lambda sock: _tune_socket(sock, user_timeout))
        except OSError as exc:
            error = exc
    raise error if error is not None else OSError(f"no address to connect to on port {port}")


def _check_count(name: str, value: object) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_seconds(name: str, seconds: object) -> float:
    if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 < seconds < math.inf):
        raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


@final
class TcpTransport:
    """One node's TCP transport: the listener and the ``TcpNode`` of each peer.

    Use it as an async context manager; on a normal exit, or when cancelled,
    it gives the peers' queues up to ``flush_timeout`` seconds to drain (so
    that a leader's ``TimeoutNow`` gets out before the process ends, even to a
    peer it must connect to first), then closes everything.
    An exception raised in the body comes out as itself, not wrapped in an
    exception group::

        async with TcpTransport("a") as transport:
            b = transport.node("b", "127.0.0.1", 7002)
            state, control = RaftElectionState.init("a", nodes=[b], min_nodes=2)
            await transport.listen("127.0.0.1", 7001, control)
            await raft_election(state)

    Args:
        self_id: this node's id (for logs).
        server_ssl_context: TLS for the listener (``None``: plain TCP).  With
            it, every message must come from a sender named by the client
            certificate; use ``make_tls_contexts``.
        client_ssl_context: TLS for outgoing connections (``None``: plain TCP).
        queue_size: frames kept per peer; the oldest is dropped when full.
        connect_timeout: bound on one connection attempt (with the TLS handshake).
        backoff_initial: the wait after the first failed attempt, in seconds;
            it doubles with each further failure ...
        backoff_max: ... up to this (default ``min(1 s, 2T)``, at least
            *backoff_initial*); each wait is jittered to 50-100 %.
        handshake_timeout: bound on an incoming TLS handshake.
        max_connections: incoming connections open at once; at the limit the
            least recently useful one that is not a live peer's is closed for
            the newcomer, and when there is none the newcomer is closed.
        flush_timeout: on exit, how long queued frames may take to go out.
        rng: randomness for the jitter.
        election_timeout: ``T``, the election timeout of the election this
            transport carries (pass the same value to ``RaftElectionState.init``);
            the defaults of the timeouts below derive from it.
        user_timeout: ``TCP_USER_TIMEOUT`` of outgoing connections: data
            unacknowledged this long closes the connection (default ``2T``).
        silence_timeout: while a peer answers none of our requests, a connection
            attempt pending this long is restarted, at most once per this interval
            (default ``T``); an open connection is replaced after ``max(1 s, 4x)``
            this.  A connection that carried a valid frame this recently is never
            evicted.
        first_frame_timeout: an incoming connection must carry a valid frame
            from a known peer within this (after the TLS handshake), or it is
            closed (default ``max(1 s, 4T)``).
        idle_timeout: ... and then one at least this often (default ``max(5 s, 20T)``).
        max_connections_per_address: incoming connections open at once from one
            address (an IPv6 /64); default a quarter of *max_connections*.
    """

    def __init__(
        self,
        self_id: NodeId,
        *,
        server_ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
        queue_size: int = 64,
        connect_timeout: float = 2.0,
        backoff_initial: float = 0.02,
        backoff_max: float | None = None,
        handshake_timeout: float = 2.0,
        max_connections: int = 256,
        flush_timeout: float = 0.5,
        rng: random.Random | None = None,
        election_timeout: float = 0.15,
        user_timeout: float | None = None,
        silence_timeout: float | None = None,
        first_frame_timeout: float | None = None,
        idle_timeout: float | None = None,
        max_connections_per_address: int | None = None,
    ) -> None:
        check_node_id(self_id, "self_id")
        _check_count("queue_size", queue_size)
        _check_count("max_connections", max_connections)
        per_address = _check_count(
            "max_connections_per_address",
            max(1, max_connections // 4) if max_connections_per_address is None else max_connections_per_address,
        )
        _check_seconds("election_timeout", election_timeout)
        T = float(election_timeout)
        if backoff_max is None:
            backoff_max = max(backoff_initial, min(1.0, T))
        derived: dict[str, float] = {}
        for name, seconds, default in (
            ("connect_timeout", connect_timeout, connect_timeout),
            ("backoff_initial", backoff_initial, backoff_initial),
            ("backoff_max", backoff_max, backoff_max),
            ("handshake_timeout", handshake_timeout, handshake_timeout),
            ("user_timeout", user_timeout, 2 * T),
            ("silence_timeout", silence_timeout, T),
            ("first_frame_timeout", first_frame_timeout, max(1.0, 4 * T)),
            ("idle_timeout", idle_timeout, max(5.0, 20 * T)),
        ):
            derived[name] = _check_seconds(name, default if seconds is None else seconds)
        if not (isinstance(flush_timeout, (int, float)) and 0 <= flush_timeout < math.inf):
            raise ValueError(f"flush_timeout must be >= 0 seconds, got {flush_timeout!r}")
        if derived["backoff_max"] < derived["backoff_initial"]:
            raise ValueError("backoff_max must be >= backoff_initial")
        self.self_id = self_id
        self.server_ssl_context = server_ssl_context
        self.client_ssl_context = client_ssl_context
        self.queue_size = queue_size
        self.connect_timeout = derived["connect_timeout"]
        self.backoff_initial = derived["backoff_initial"]
        self.backoff_max = derived["backoff_max"]
        self.handshake_timeout = derived["handshake_timeout"]
        self.max_connections = max_connections
        self.flush_timeout = float(flush_timeout)
        self.election_timeout = T
        self.user_timeout = derived["user_timeout"]
        self.silence_timeout = derived["silence_timeout"]
        self.first_frame_timeout = derived["first_frame_timeout"]
        self.idle_timeout = derived["idle_timeout"]
        self.max_connections_per_address = per_address
        self._rng = rng if rng is not None else random.Random()
        self._stats = TcpStats()
        self._nodes: dict[NodeId, TcpNode] = {}
        self._tg: TaskGroup | None = None
        self._closed = False
        self._flushed = False  # the flush on exit is over: a cancelled writer does not try again
        self._control: MemoryObjectSendStream[ControlMessage | Message] | None = None
        self._last_message: Message | None = None
        self._last_frame = b""
        self._listener = Listener(self, ConnectionTable(max_connections, per_address, self.silence_timeout))

    def __repr__(self) -> str:
        return f"<TcpTransport {self.self_id!r} peers={list(self._nodes)!r}>"

    # --------------------------------------------------------------- lifetime

    async def __aenter__(self) -> TcpTransport:
        if self._tg is not None or self._closed:
            raise RuntimeError("a TcpTransport can be entered once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg = self._tg
        assert tg is not None
        self._closed = True
        nodes = list(self._nodes.values())
        for node in nodes:
            node._close()
        if exc_type is None or issubclass(exc_type, anyio.get_cancelled_exc_class()):
            # Also when cancelled: a graceful stop by cancellation still hands over.
            with anyio.move_on_after(self.flush_timeout, shield=True):
                for node in nodes:
                    if node._done is not None:
                        await node._done.wait()
        self._flushed = True
        tg.cancel_scope.cancel()
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        except BaseException as error:
            # The body's own exception (or a single one from a task) comes out
            # as itself, not wrapped in an exception group.
            raise_single(error)
            raise

    def _report_disconnected(self, peer_id: NodeId) -> None:
        """Tell the election (``control``, given to ``listen``) that *peer_id*'s side closed its connection."""
        control = self._control
        if control is None or self._closed:
            return
        try:
            control.send_nowait(PeerDisconnected(peer_id))
        except anyio.WouldBlock:
            self._stats.control_overflows += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        else:
            self._stats.disconnect_notices += 1
            logger.debug("node %r: told the election that peer %r closed its connection", self.self_id, peer_id)

    def _encode(self, message: Message) -> bytes:
        """The frame of *message*; the last one is kept, for the copies of one message a leader sends every peer."""
        last = self._last_message
        if last is not None and type(last) is type(message) and last == message:
            return self._last_frame
        frame = encode_message(message)
        self._last_message, self._last_frame = message, frame
        return frame

    def _task_group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("the TcpTransport is not open: use it with 'async with'")
        return self._tg

    def stats(self) -> TcpStats:
        """A copy of the counters."""
        return TcpStats(**self._stats.as_dict())

    # ------------------------------------------------------------------ peers

    def node(self, peer_id: NodeId, host: str, port: int, *, server_name: str | None = None) -> TcpNode:
        """Return the ``TcpNode`` that reaches *peer_id* at *host*:*port*.

        A second call for the same id replaces the address (pass the new node
        to ``AddNode`` to use it).

        Args:
            peer_id: the peer's node id.
            host: its listener's host name or address.
            port: its listener's port.
            server_name: with TLS, the name its certificate must carry
                (default ``str(peer_id)``).

        Raises:
            TypeError, ValueError: a bad id or port, or *peer_id* is this node.
        """
        check_node_id(peer_id, "peer_id")
        if peer_id == self.self_id:
            raise ValueError(f"peer_id {peer_id!r} is this node itself")
        if type(port) is not int or not 0 < port < 65536:
            raise ValueError(f"port must be an int in 1..65535, got {port!r}")
        node = TcpNode(self, peer_id, host, port, server_name)
        old = self._nodes.get(peer_id)
        if old is not None:
            old._close()
        self._nodes[peer_id] = node
        return node

    # --------------------------------------------------------------- listener

    async def listen(self, host: str, port: int, control: MemoryObjectSendStream[ControlMessage | Message]) -> int:
        """Listen on *host*:*port* and feed every valid message into *control*.

        The listener runs until the transport closes.  *control* is not closed
        by the transport.  It also gets ``PeerDisconnected(peer_id)`` when an
        outgoing connection to a peer is closed or reset from the peer's side
        (its process exited), once per connection.

        Returns:
            The port listened on (useful with port 0).

        Raises:
            OSError: the address cannot be bound.
        """
        if self._closed:
            raise RuntimeError("the TcpTransport is closed")
        tg = self._task_group()
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        self._control = control
        bound = listener.extra(SocketAttribute.local_port)
        for sub in listener.listeners:
            assert isinstance(sub, SocketListener)
            tg.start_soon(self._listener.accept_loop, sub, control, name=f"almost_raft tcp listener {self.self_id!r}")
        logger.info(
            "node %r: listening on %s:%d%s", self.self_id, host, bound, " (TLS)" if self.server_ssl_context else ""
        )
        return int(bound)
