"""A TCP transport on anyio sockets, with optional (mutual) TLS.

``TcpTransport`` owns one node's network side: a listener that decodes the
frames of ``_wire`` and feeds the messages into ``control``, and one
``TcpNode`` per peer.  Each direction of each pair of nodes has its own
connection: a node writes only on the connections it opened and reads only on
the ones it accepted, so a message and its answer travel on two connections.

A ``TcpNode`` never blocks the election loop (the driver calls it from a
sender task, bounded by ``message_timeout``), and never waits for the peer:
``send_message`` writes the frame into an open, idle connection's socket
buffer at once, or else puts it in a bounded queue (the oldest frame is
dropped when it is full: election messages are superseded by newer ones) for
a writer task.  The writer connects lazily, on the first message, and after a failure
waits a capped exponential backoff with jitter before the next attempt.  A
message that arrives from a peer cuts that peer's backoff short: the peer is
evidently back.  A watcher reads each outgoing connection, on which nothing is
ever sent back, so a peer that closed or crashed is noticed at once, before
the next message is written into a dead connection and lost.  Connection
trouble is logged once per change of state, not once per retry.

With TLS, both sides present certificates signed by a common CA.  The
connecting side checks that the listener's certificate names the peer it
meant to reach (``server_name``, by default ``str(peer_id)``); the listener
takes the names in the connecting side's certificate (subject common name and
DNS subject-alternative names) as its identity, and drops and counts every
message whose claimed sender is not among them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Final, final

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketListener, SocketStream, TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from anyio.streams.tls import TLSAttribute, TLSStream

from .._errors import raise_single
from .._messages import ControlMessage, Message, NodeId, check_node_id
from ._wire import FrameReader, WireError, encode_message, node_id_text

logger = logging.getLogger("almost_raft")

_RECEIVE_SIZE: Final = 65536
_STREAM_ERRORS: Final = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.IncompleteRead,
    OSError,
    ssl.SSLError,
)


@final
@dataclass(slots=True)
class TcpStats:
    """Counters of one ``TcpTransport``; each only grows.

    Attributes:
        connections_accepted: incoming connections taken.
        connections_refused: incoming connections closed at once (``max_connections`` reached).
        tls_handshake_failures: incoming connections whose TLS handshake failed
            (no certificate, a certificate from another CA, not TLS at all, too slow).
        frames_received: valid messages decoded from incoming connections.
        frames_rejected: malformed frames (``WireError``) received.
        identity_mismatches: valid messages dropped because their claimed
            sender is not named by the connection's TLS certificate.
        control_overflows: valid messages dropped because ``control`` was full.
        connects: outgoing connections established.
        connect_failures: outgoing connection attempts that failed.
        disconnects: outgoing connections lost (closed by the peer, or a send failed).
        messages_queued: messages accepted by ``TcpNode.send_message``.
        messages_sent: messages written to a connection.
        messages_dropped: queued messages lost: the oldest dropped from a full
            queue, or lost with a broken connection or at shutdown.
    """

    connections_accepted: int = 0
    connections_refused: int = 0
    tls_handshake_failures: int = 0
    frames_received: int = 0
    frames_rejected: int = 0
    identity_mismatches: int = 0
    control_overflows: int = 0
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
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


def _tune_socket(stream: ByteStream) -> None:
    """No Nagle delay; keepalive probes so an idle connection that died is noticed."""
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
    except anyio.TypedAttributeLookupError:
        return
    options = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 15000)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        with contextlib.suppress(OSError):  # a platform without the option
            sock.setsockopt(level, option, value)


class _RateLimitedLog:
    """Logs a recurring inbound problem at most once per interval, with the count of the others."""

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
        self._stream: ByteStream | None = None
        self._watch_scope: anyio.CancelScope | None = None
        self._started = False
        self._busy = False
        self._closing = False
        self._done: anyio.Event | None = None
        self._failures = 0
        self._retry_at = -math.inf
        self._state = "new"  # new | connected | failing | closed

    def __repr__(self) -> str:
        return f"TcpNode({self._node_id!r}, {self.host}:{self.port}, {self._state})"

    @property
    def node_id(self) -> NodeId:
        """The id of the peer this node reaches."""
        return self._node_id

    @property
    def connected(self) -> bool:
        """Whether an outgoing connection to the peer is open now."""
        return self._stream is not None

    @property
    def queued(self) -> int:
        """Frames waiting to be sent."""
        return len(self._queue)

    async def send_message(self, message: Message) -> None:
        """Send *message* to the peer, or queue it (see ``send_message_nowait``).

        When a connection is open and idle the frame is written at once,
        which saves a task switch per message; otherwise it is queued for the
        writer task.  Either way it only waits for the local socket buffer.
        If the call is cancelled while writing, the connection is closed (it
        may hold half a frame) and the next message opens a new one.

        Raises:
            WireError: *message* cannot be encoded.
        """
        stream = self._stream
        if stream is None or self._busy or self._queue or self._closing or self._transport._closed:
            self.send_message_nowait(message)
            return
        frame = encode_message(message)
        self._transport._stats.messages_queued += 1
        await self._write(stream, frame, 1)

    def send_message_nowait(self, message: Message) -> None:
        """Queue *message* for the peer without waiting (the optional fast path of ``Node``).

        The election calls this from its own task instead of ``send_message``,
        so each peer has one queue, this one, and no sender task of the
        election's.  When the queue is full the oldest frame is dropped and
        counted.  After the transport closed, messages are dropped and counted.

        Raises:
            WireError: *message* cannot be encoded.
        """
        frame = encode_message(message)
        transport = self._transport
        stats = transport._stats
        if self._closing or transport._closed:
            stats.messages_dropped += 1
            return
        stats.messages_queued += 1
        if len(self._queue) >= transport.queue_size:
            self._queue.popleft()
            stats.messages_dropped += 1
        self._queue.append(frame)
        if not self._started:
            self._started = True
            self._done = anyio.Event()
            transport._task_group().start_soon(
                self._run, name=f"almost_raft tcp {transport.self_id!r}->{self._node_id!r}"
            )
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def _poke(self) -> None:
        """A message came from the peer: it is up, so stop waiting out the backoff."""
        if self._stream is None and self._failures:
            self._retry_at = -math.inf
            self._wake()

    def _close(self) -> None:
        self._closing = True
        self._wake()

    # ---------------------------------------------------------------- writer

    async def _run(self) -> None:
        try:
            while True:
                while not self._queue:
                    if self._closing:
                        return
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()
                if self._stream is None:
                    now = anyio.current_time()
                    if now < self._retry_at:
                        if self._closing:
                            return  # no reconnecting just to flush
                        self._wakeup = anyio.Event()
                        with anyio.move_on_after(self._retry_at - now):
                            await self._wakeup.wait()
                        continue
                    if not await self._connect():
                        continue
                if self._busy:  # send_message is writing: it wakes us when done
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()
                    continue
                stream = self._stream
                assert stream is not None
                batch = b"".join(self._queue)
                count = len(self._queue)
                self._queue.clear()
                await self._write(stream, batch, count)
        finally:
            if self._queue:
                self._transport._stats.messages_dropped += len(self._queue)
                self._queue.clear()
            if self._watch_scope is not None:
                self._watch_scope.cancel()
            if self._stream is not None:
                stream, self._stream = self._stream, None
                await anyio.aclose_forcefully(stream)
            self._state = "closed"
            assert self._done is not None
            self._done.set()

    async def _write(self, stream: ByteStream, data: bytes, count: int) -> None:
        """Write *count* frames; only one task writes at a time."""
        stats = self._transport._stats
        self._busy = True
        try:
            await stream.send(data)
        except _STREAM_ERRORS as exc:
            stats.messages_dropped += count
            await self._drop(stream, f"send failed: {_describe(exc)}")
        except BaseException:
            # Cancelled while writing: the connection may hold half a frame, which
            # would garble the next one.  Close it; the peer sees a truncated frame.
            stats.messages_dropped += count
            if self._forget(stream, "a send was cancelled"):
                with anyio.CancelScope(shield=True):
                    await anyio.aclose_forcefully(stream)
            raise
        else:
            stats.messages_sent += count
        finally:
            self._busy = False
            if self._queue:
                self._wake()

    async def _connect(self) -> bool:
        transport = self._transport
        stats = transport._stats
        stream: ByteStream | None = None
        try:
            with anyio.fail_after(transport.connect_timeout):
                raw = await anyio.connect_tcp(self.host, self.port)
                stream = raw
                _tune_socket(raw)
                if transport.client_ssl_context is not None:
                    stream = await TLSStream.wrap(
                        raw,
                        hostname=self.server_name,
                        ssl_context=transport.client_ssl_context,
                        standard_compatible=False,
                    )
        except (*_STREAM_ERRORS, TimeoutError) as exc:
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            stats.connect_failures += 1
            self._failures += 1
            # Capped exponential backoff, with jitter so that peers do not retry in step.
            delay = min(transport.backoff_max, transport.backoff_initial * 2 ** (self._failures - 1))
            self._retry_at = anyio.current_time() + delay * (0.5 + 0.5 * transport._rng.random())
            self._set_state("failing", f"cannot connect: {_describe(exc)}")
            return False
        stats.connects += 1
        self._failures = 0
        self._retry_at = -math.inf
        self._stream = stream
        self._watch_scope = scope = anyio.CancelScope()
        transport._task_group().start_soon(self._watch, stream, scope)
        self._set_state("connected", "")
        return True

    async def _watch(self, stream: ByteStream, scope: anyio.CancelScope) -> None:
        """Notice at once when the peer closes: nothing is ever sent back on this connection."""
        with scope:
            try:
                data = await stream.receive(_RECEIVE_SIZE)
            except _STREAM_ERRORS as exc:
                why = "closed by the peer" if isinstance(exc, anyio.EndOfStream) else _describe(exc)
            else:
                why = f"the peer sent {len(data)} unexpected bytes"
            if self._stream is stream:
                await self._drop(stream, why)

    def _forget(self, stream: ByteStream, why: str) -> bool:
        """Stop using *stream* (if it is the current one); the caller closes it."""
        if self._stream is not stream:
            return False
        self._stream = None
        self._transport._stats.disconnects += 1
        if self._watch_scope is not None:
            self._watch_scope.cancel()
            self._watch_scope = None
        self._set_state("failing" if self._queue else "disconnected", why)
        return True

    async def _drop(self, stream: ByteStream, why: str) -> None:
        if not self._forget(stream, why):
            return
        # The next message reconnects at once; backoff applies only to failed attempts.
        await anyio.aclose_forcefully(stream)
        self._wake()

    def _set_state(self, state: str, why: str) -> None:
        old, self._state = self._state, state
        if old == state:
            logger.debug(
                "node %r: peer %r at %s:%d: %s", self._transport.self_id, self._node_id, self.host, self.port, why
            )
            return
        me = self._transport.self_id
        if state == "connected":
            if old == "failing":
                logger.warning("node %r: peer %r at %s:%d is reachable again", me, self._node_id, self.host, self.port)
            else:
                logger.debug("node %r: connected to peer %r at %s:%d", me, self._node_id, self.host, self.port)
        elif state == "failing":
            logger.warning(
                "node %r: peer %r at %s:%d unreachable (%s); retrying with backoff, logged again when it changes",
                me,
                self._node_id,
                self.host,
                self.port,
                why,
            )
        else:
            logger.info(
                "node %r: connection to peer %r at %s:%d ended: %s", me, self._node_id, self.host, self.port, why
            )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@final
class TcpTransport:
    """One node's TCP transport: the listener and the ``TcpNode`` of each peer.

    Use it as an async context manager; on a normal exit it gives the peers'
    queues up to ``flush_timeout`` seconds to drain (so that a leader's
    ``TimeoutNow`` gets out before the process ends), then closes everything.
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
        backoff_max: ... up to this; each wait is jittered to 50-100 %.
        handshake_timeout: bound on an incoming TLS handshake.
        max_connections: incoming connections open at once; more are closed.
        flush_timeout: on exit, how long queued frames may take to go out.
        rng: randomness for the jitter.
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
        backoff_max: float = 1.0,
        handshake_timeout: float = 2.0,
        max_connections: int = 256,
        flush_timeout: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        check_node_id(self_id, "self_id")
        for name, value in (("queue_size", queue_size), ("max_connections", max_connections)):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, seconds in (
            ("connect_timeout", connect_timeout),
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
            ("handshake_timeout", handshake_timeout),
        ):
            if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
        if not (isinstance(flush_timeout, (int, float)) and 0 <= flush_timeout < math.inf):
            raise ValueError(f"flush_timeout must be >= 0 seconds, got {flush_timeout!r}")
        if backoff_max < backoff_initial:
            raise ValueError("backoff_max must be >= backoff_initial")
        self.self_id = self_id
        self.server_ssl_context = server_ssl_context
        self.client_ssl_context = client_ssl_context
        self.queue_size = queue_size
        self.connect_timeout = float(connect_timeout)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.handshake_timeout = float(handshake_timeout)
        self.max_connections = max_connections
        self.flush_timeout = float(flush_timeout)
        self._rng = rng if rng is not None else random.Random()
        self._stats = TcpStats()
        self._nodes: dict[NodeId, TcpNode] = {}
        self._tg: TaskGroup | None = None
        self._closed = False
        self._open_connections = 0
        self._reject_log = _RateLimitedLog()
        self._tls_log = _RateLimitedLog()

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
        if exc_type is None:
            with anyio.move_on_after(self.flush_timeout, shield=True):
                for node in nodes:
                    if node._done is not None:
                        await node._done.wait()
        tg.cancel_scope.cancel()
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        except BaseException as error:
            # The body's own exception (or a single one from a task) comes out
            # as itself, not wrapped in an exception group.
            raise_single(error)
            raise

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
        by the transport.

        Returns:
            The port listened on (useful with port 0).

        Raises:
            OSError: the address cannot be bound.
        """
        if self._closed:
            raise RuntimeError("the TcpTransport is closed")
        tg = self._task_group()
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        bound = listener.extra(SocketAttribute.local_port)
        for sub in listener.listeners:
            assert isinstance(sub, SocketListener)
            tg.start_soon(self._accept_loop, sub, control, name=f"almost_raft tcp listener {self.self_id!r}")
        logger.info(
            "node %r: listening on %s:%d%s", self.self_id, host, bound, " (TLS)" if self.server_ssl_context else ""
        )
        return int(bound)

    async def _accept_loop(
        self, listener: SocketListener, control: MemoryObjectSendStream[ControlMessage | Message]
    ) -> None:
        tg = self._task_group()
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # e.g. out of file descriptors: wait, do not spin
                    logger.warning("node %r: accept failed: %s", self.self_id, _describe(exc))
                    await anyio.sleep(0.1)
                    continue
                if self._open_connections >= self.max_connections:
                    self._stats.connections_refused += 1
                    self._reject_log.warning(
                        "node %r: refused a connection, %d already open", self.self_id, self._open_connections
                    )
                    await anyio.aclose_forcefully(stream)
                    continue
                self._open_connections += 1
                self._stats.connections_accepted += 1
                tg.start_soon(self._serve_connection, stream, control)

    async def _serve_connection(
        self, raw: SocketStream, control: MemoryObjectSendStream[ControlMessage | Message]
    ) -> None:
        stats = self._stats
        stream: ByteStream = raw
        try:
            remote = f"{raw.extra(SocketAttribute.remote_address)!r}"
        except (anyio.TypedAttributeLookupError, OSError):
            remote = "?"
        identities: frozenset[str] | None = None
        try:
            if self.server_ssl_context is not None:
                try:
                    with anyio.fail_after(self.handshake_timeout):
                        tls = await TLSStream.wrap(
                            raw, server_side=True, ssl_context=self.server_ssl_context, standard_compatible=False
                        )
                except (*_STREAM_ERRORS, TimeoutError) as exc:
                    stats.tls_handshake_failures += 1
                    self._tls_log.warning(
                        "node %r: TLS handshake with %s failed: %s", self.self_id, remote, _describe(exc)
                    )
                    return
                stream = tls
                identities = certificate_identities(tls.extra(TLSAttribute.peer_certificate))
            await self._read_frames(stream, control, remote, identities)
        finally:
            self._open_connections -= 1
            await anyio.aclose_forcefully(stream)

    async def _read_frames(
        self,
        stream: ByteStream,
        control: MemoryObjectSendStream[ControlMessage | Message],
        remote: str,
        identities: frozenset[str] | None,
    ) -> None:
        stats = self._stats
        reader = FrameReader()
        warned_mismatch = False
        while True:
            try:
                data = await stream.receive(_RECEIVE_SIZE)
            except _STREAM_ERRORS:
                if reader.pending:
                    stats.frames_rejected += 1
                    self._reject_log.warning(
                        "node %r: connection from %s ended inside a frame (%d bytes)",
                        self.self_id,
                        remote,
                        reader.pending,
                    )
                return
            reader.feed(data)
            while True:
                try:
                    item = reader.next()
                except WireError as exc:
                    # The frame boundary is lost: this connection cannot be read further.
                    stats.frames_rejected += 1
                    self._reject_log.warning("node %r: closing connection from %s: %s", self.self_id, remote, exc)
                    return
                if item is None:
                    break
                if isinstance(item, WireError):
                    stats.frames_rejected += 1
                    self._reject_log.warning("node %r: dropped a frame from %s: %s", self.self_id, remote, item)
                    continue
                sender = item.sender
                if identities is not None and node_id_text(sender) not in identities:
                    stats.identity_mismatches += 1
                    if not warned_mismatch:
                        warned_mismatch = True
                        logger.warning(
                            "node %r: dropping messages from %s claiming sender %r; its certificate names %s",
                            self.self_id,
                            remote,
                            sender,
                            sorted(identities) or "nobody",
                        )
                    continue
                stats.frames_received += 1
                node = self._nodes.get(sender)
                if node is not None:
                    node._poke()
                try:
                    control.send_nowait(item)
                except anyio.WouldBlock:
                    stats.control_overflows += 1
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
