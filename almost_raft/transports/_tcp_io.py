"""One TCP connection of the transport, on a non-blocking socket: writes that never wait, reads that call back.

anyio's streams cost a task switch or two, a cancel-scope check and a copy
for every frame in each direction, which is most of what an idle cluster
spends (README, "Performance").  A ``Connection`` is the small part of a
stream that the transport needs, on the raw socket:

* ``write`` is synchronous: the kernel takes the bytes at once (a frame is a
  few dozen bytes; the socket buffer holds thousands of them), and only what
  it refuses waits in ``pending`` for ``flush``.  So the election's own task
  puts a message on the wire, with no task switch, in the same step that
  produced it: a leader's ``TimeoutNow`` is out before its process can exit.
* ``read_loop`` hands what arrives to a callback until the connection ends.
  On asyncio the socket stays registered with the loop and the callback runs
  straight from it; elsewhere a task waits with ``anyio.wait_readable``.
* TLS, when asked for, runs through ``ssl.SSLObject`` and memory buffers
  (what anyio's ``TLSStream`` and asyncio do underneath): the same contexts,
  checks and handshake.

Closing.  A socket must not be closed while a task waits on it, and only the
task that waits knows when it has stopped waiting.  So ``abort`` only marks
the connection and cancels the waits; the socket is closed when the last
wait has ended (at once when none is under way).  The data already written
still goes out before the kernel's FIN.

This module is the only one that touches the event loop directly (an
asyncio selector callback); everything else waits through anyio.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Final, final

import anyio

RECEIVE_SIZE: Final = 65536

BROKEN: Final = (OSError, ssl.SSLError, anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)
"""What a write, a flush, a handshake or a connection attempt raises when the connection is gone."""

_PEER_ENDED: Final = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def ended_by_peer(exc: BaseException) -> bool:
    """Whether *exc* says the peer's side reset the connection (its process most likely ended).

    A timeout (``TCP_USER_TIMEOUT``: a partition, say) or an unreachable host is not.
    """
    return isinstance(exc, _PEER_ENDED)


def _asyncio_loop() -> object | None:
    """The running asyncio loop of this thread, if asyncio is what runs (``None`` on trio)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        loop: object = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop


@final
class Connection:
    """A connected TCP socket (made non-blocking), with TLS from *context* if given.

    *server_hostname*: the name the peer's certificate must carry, on the
    connecting side; ``None`` on the accepting side.  With TLS, call
    ``handshake`` before anything else.

    Attributes:
        socket: the socket (for options; do not read, write or close it).
        error: why the connection ended, once it has (for logs).
        ended_by_peer: whether it ended by the peer's side, with end-of-file or
            a reset (not a timeout, not an unreachable host, not ``abort``).
    """

    __slots__ = (
        "_closing",
        "_incoming",
        "_outgoing",
        "_pending",
        "_plain",
        "_scopes",
        "_tls",
        "ended_by_peer",
        "error",
        "socket",
    )

    def __init__(self, sock: socket.socket, context: ssl.SSLContext | None, *, server_hostname: str | None) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = (
            None
            if context is None
            else context.wrap_bio(
                self._incoming, self._outgoing, server_side=server_hostname is None, server_hostname=server_hostname
            )
        )
        self._pending = bytearray()  # written, not yet taken by the kernel
        self._plain = b""  # application data decrypted during the handshake
        self._scopes: set[anyio.CancelScope] = set()
        self._closing = False
        self.error: str | None = None
        self.ended_by_peer = False

    @property
    def pending(self) -> int:
        """Bytes written that the kernel has not taken yet (``flush`` sends them)."""
        return len(self._pending)

    @property
    def closing(self) -> bool:
        """Whether ``abort`` was called."""
        return self._closing

    def peer_certificate(self) -> object:
        """The peer's certificate as ``SSLSocket.getpeercert()`` gives it (``None`` without TLS)."""
        return None if self._tls is None else self._tls.getpeercert()

    # ------------------------------------------------------------ lifetime

    def abort(self) -> None:
        """Close the connection: at once, or when the waits under way have ended (they are cancelled)."""
        self._closing = True
        for scope in self._scopes:
            scope.cancel()
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self._closing and not self._scopes and self.socket.fileno() != -1:
            self.socket.close()

    @contextmanager
    def _waiting(self) -> Iterator[anyio.CancelScope]:
        """A wait on the socket, cancelled by ``abort``; the socket is closed only after it has ended."""
        if self._closing:
            raise anyio.ClosedResourceError
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)
            self._close_if_idle()
        if scope.cancel_called:
            raise anyio.ClosedResourceError

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        with self._waiting():
            await wait(self.socket)

    # -------------------------------------------------------------- writing

    def write(self, data: bytes) -> None:
        """Write *data* without waiting: the kernel takes it now, or it waits in ``pending`` for ``flush``.

        Raises:
            OSError, ssl.SSLError: the connection is broken.
            anyio.ClosedResourceError: it was aborted.
        """
        if self._closing:
            raise anyio.ClosedResourceError
        if self._tls is not None:
            self._tls.write(data)
            data = self._outgoing.read()
        self._send_now(data)

    def _send_now(self, data: bytes) -> None:
        """Hand *data* to the kernel after what is pending; keep what it does not take for ``flush``."""
        if self._pending:
            self._pending += data
            return
        try:
            sent = self.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            self._pending += memoryview(data)[sent:]

    async def flush(self) -> None:
        """Wait until the kernel has taken every pending byte.

        Raises:
            OSError, ssl.SSLError: the connection is broken.
            anyio.ClosedResourceError: it was aborted.
        """
        while self._pending:
            await self._wait(anyio.wait_writable)
            try:
                sent = self.socket.send(self._pending)
            except (BlockingIOError, InterruptedError):
                continue
            del self._pending[:sent]

    def _send_tls_output(self) -> None:
        """Pass what the TLS layer produced by itself (handshake, tickets, alerts) to the socket."""
        if self._outgoing.pending:
            self._send_now(self._outgoing.read())

    # -------------------------------------------------------------- reading

    def _receive(self) -> bytes | None:
        """What has arrived: the bytes, ``b""`` once the connection has ended, ``None`` when nothing has yet."""
        try:
            data = self.socket.recv(RECEIVE_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return self._ended(exc)
        tls = self._tls
        if tls is None:
            if not data:
                return self._ended(None)
            return data
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        chunks: list[bytes] = []
        try:
            while True:
                chunk = tls.read(RECEIVE_SIZE)
                if not chunk:
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        except ssl.SSLError as exc:
            return self._ended(exc)
        try:
            self._send_tls_output()
        except OSError as exc:
            return self._ended(exc)
        if chunks:
            return b"".join(chunks)
        if not data:
            return self._ended(None)
        return None  # only TLS records of its own (a session ticket): nothing for the caller

    def _ended(self, exc: BaseException | None) -> bytes:
        """Record why the connection ended (*exc*, or ``None``: end-of-file from the peer); ``b""``."""
        if exc is None:
            self.error = "closed by the peer"
            self.ended_by_peer = True
        else:
            self.error = _describe(exc)
            self.ended_by_peer = ended_by_peer(exc)
        return b""

    async def read_loop(self, on_data: Callable[[bytes], bool]) -> None:
        """Call ``on_data(bytes)`` with what arrives until the connection ends or ``on_data`` returns ``False``.

        On asyncio ``on_data`` runs from the loop's reader callback, outside
        any task: it must not await, nor call anyio functions that need the
        current task (``anyio.current_time`` among them: use the loop's clock).
        What it raises is raised here.  Returns when the peer closed the
        connection (``error`` tells why), when ``on_data`` returned
        ``False``, or at ``abort`` (then raising ``anyio.ClosedResourceError``).
        """
        if self._plain:
            plain, self._plain = self._plain, b""
            if not on_data(plain):
                return
        loop = _asyncio_loop()
        if loop is not None:
            try:
                await self._read_with_callback(loop, on_data)
                return
            except NotImplementedError:  # a loop without add_reader (Windows' proactor)
                pass
        with self._waiting():  # one cancel scope for the whole loop, not one per frame
            while True:
                await anyio.wait_readable(self.socket)
                data = self._receive()
                if data is None:
                    continue
                if not data or not on_data(data):
                    return

    async def _read_with_callback(self, loop: object, on_data: Callable[[bytes], bool]) -> None:
        fd = self.socket.fileno()
        done = anyio.Event()
        failure: list[BaseException] = []
        add_reader: Callable[..., None] = loop.add_reader  # type: ignore[attr-defined]
        remove_reader: Callable[[int], bool] = loop.remove_reader  # type: ignore[attr-defined]

        def readable() -> None:
            try:
                data = self._receive()
                if data is None or (data and on_data(data)):
                    return
            except BaseException as exc:  # raised in the task, not lost in the loop's handler
                failure.append(exc)
            remove_reader(fd)  # level-triggered: stop now, not when the task gets to run
            done.set()

        with self._waiting():
            add_reader(fd, readable)
            try:
                await done.wait()
            finally:
                remove_reader(fd)
        if failure:
            raise failure[0]

    # ------------------------------------------------------------ handshake

    async def handshake(self) -> None:
        """Complete the TLS handshake (nothing to do without TLS).

        Raises:
            OSError, ssl.SSLError: it failed (a bad certificate, not TLS at all, closed).
            anyio.EndOfStream: the peer closed the connection during it.
            anyio.ClosedResourceError: the connection was aborted.
        """
        tls = self._tls
        if tls is None:
            return
        while True:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._send_tls_output()
                await self.flush()
                await self._wait(anyio.wait_readable)
                try:
                    data = self.socket.recv(RECEIVE_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    raise anyio.EndOfStream from None
                self._incoming.write(data)
            else:
                break
        self._send_tls_output()
        await self.flush()
        # The peer's first frames may have come in the handshake's last segment.
        plain: list[bytes] = []
        try:
            while chunk := tls.read(RECEIVE_SIZE):
                plain.append(chunk)
        except ssl.SSLWantReadError:
            pass
        self._plain = b"".join(plain)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def connect(address: str, port: int, tune: Callable[[socket.socket], None]) -> socket.socket:
    """Open a TCP connection to the IP *address* and *port*; *tune* sets socket options first.

    Raises:
        OSError: refused, unreachable, or any other failure.
    """
    host = address.split("%", 1)[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        tune(sock)
        code = sock.connect_ex((address, port))
        if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            await anyio.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, f"connect to {address}:{port}: {os.strerror(code)}")
    except BaseException:
        sock.close()
        raise
    return sock


def loop_clock() -> Callable[[], float]:
    """A clock that reads ``anyio.current_time()``'s time and also works in ``read_loop``'s callback."""
    loop = _asyncio_loop()
    if loop is not None:
        return loop.time  # type: ignore[attr-defined,no-any-return]
    return anyio.current_time
