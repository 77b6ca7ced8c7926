"""The node's side of ``--exec``: one child command, run only while this node holds the lease.

The child is not started by the node but by a supervisor process
(``_supervisor.py``, where the theory of operation is), which the node spawns
once at start-up and talks to over a Unix socket pair.  The node sends it the
start of each child with the lease's deadline, and then every renewed
deadline; the supervisor kills the child's process group by the deadline on
its own, so a frozen node cannot keep a child running past its lease.

Times crossing the process boundary are on ``time.monotonic()``.  The lease's
deadline is on ``anyio.current_time()``, which on trio has an offset from the
monotonic clock; ``_to_monotonic`` converts, measuring the offset at each
send (the monotonic clock read first, so any error makes the deadline
earlier, never later).

``ExecRunner.work`` is the leader-only work given to ``run_while_leader``: it
starts a child, follows it while renewing the deadline, and on cancellation
(the lease is lost, or the node stops or hands over) stops it and waits until
the supervisor reports the whole process group gone, before it returns.  Only
then may the node hand leadership over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, final

import anyio
from anyio.abc import ByteStream, Process, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._messages import NodeId, Role
from ._state import RaftElectionState
from .leadership import Lease

logger = logging.getLogger("almost_raft")

OnExit = Literal["restart", "resign", "stay"]
ON_EXIT_CHOICES: tuple[OnExit, ...] = ("restart", "resign", "stay")

RESTART_DELAY = 0.1
"""Seconds before the first restart of a child that exited by itself (``on_exit="restart"``)."""
RESTART_DELAY_MAX = 10.0
"""The restart delay doubles with each quick exit, up to this."""
RESTART_RESET_AFTER = 10.0
"""A child that ran this long resets the restart delay."""
_READY_TIMEOUT = 10.0
_CONFIRM_SLACK = 2.0  # beyond the grace period, how long to wait for the supervisor's "exited"


def to_monotonic(deadline: float) -> float:
    """Convert a time on ``anyio.current_time()``'s clock to ``time.monotonic()``'s."""
    mono = time.monotonic()
    now = anyio.current_time()
    return deadline + (mono - now)


@final
@dataclass(frozen=True, slots=True)
class ChildEvent:
    """Something that happened to a child, as the supervisor reported it.

    Attributes:
        what: ``started``, ``refused``, ``signalled`` or ``exited``.
        run: this node's number for the child (1, 2, ...).
        term: the term it ran in (its fencing token).
        pid: its process id (``None`` when it could not start).
        at: ``time.monotonic()`` when it happened, in the supervisor.
        code: for ``exited``: its exit status (negative: the signal that ended it).
        by: for ``exited``: ``self`` (it exited by itself), ``lease`` (the
            lease ran out), ``stop`` (a planned stop), ``kill`` (stopped at once),
            ``node`` (the node went away) or ``supervisor`` (the supervisor went away).
        signal: for ``signalled``: ``SIGTERM`` or ``SIGKILL``.
        detail: a reason or an error, when there is one.
    """

    what: str
    run: int
    term: int
    pid: int | None
    at: float
    code: int | None = None
    by: str | None = None
    signal: str | None = None
    detail: str | None = None


@dataclass(eq=False)
class _Run:
    run: int
    term: int
    deadline: float  # the latest deadline sent, on time.monotonic()
    pid: int | None = None
    started_at: float | None = None
    exited: anyio.Event = field(default_factory=anyio.Event)
    result: ChildEvent | None = None


@final
class ExecRunner:
    """Runs a command only while this node holds the lease, through a supervisor process.

    Use it as an async context manager (it spawns the supervisor and waits
    until it is ready), ``attach`` the node's state before the election starts,
    and hand ``work`` to ``run_while_leader``.

    Args:
        command: the command and its arguments.
        node_id: this node's id (``ALMOST_RAFT_NODE_ID``).
        election_timeout: ``T``; no deadline sent is ever further than this.
        kill_after: on a lost lease, SIGTERM this long before the deadline,
            SIGKILL at the deadline.
        stop_timeout: on a planned stop (shutdown, handover), SIGKILL this long
            after SIGTERM if the child is still there.
        on_exit: what to do when the child exits by itself.
        on_event: called with every ``ChildEvent``.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        node_id: NodeId,
        election_timeout: float,
        kill_after: float,
        stop_timeout: float,
        on_exit: OnExit = "restart",
        on_event: Callable[[ChildEvent], None] | None = None,
    ) -> None:
        if not command:
            raise ValueError("no command given")
        if on_exit not in ON_EXIT_CHOICES:
            raise ValueError(f"on_exit must be one of {ON_EXIT_CHOICES}, got {on_exit!r}")
        self.command = list(command)
        self.node_id = node_id
        self.election_timeout = election_timeout
        self.kill_after = kill_after
        self.stop_timeout = stop_timeout
        self.on_exit: OnExit = on_exit
        self._on_event = on_event
        self.failed = anyio.Event()
        """Set when the supervisor went away unexpectedly: the node must stop."""
        self._state: RaftElectionState | None = None
        self._process: Process | None = None
        self._stream: ByteStream | None = None
        self._tg: TaskGroup | None = None
        self._outbox: MemoryObjectSendStream[bytes] | None = None
        self._ready = anyio.Event()
        self._closing = False
        self._stopping = False
        self._current: _Run | None = None
        self._runs = 0
        self._runs_in_term: tuple[int, int] = (-1, 0)
        self.starts = 0
        self.exits: dict[str, int] = {}
        self.last_exit: ChildEvent | None = None

    # --------------------------------------------------------------- lifetime

    async def __aenter__(self) -> ExecRunner:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = await anyio.open_process(
                self._supervisor_command(theirs.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=None,
                stderr=None,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # out of the node's process group: a Ctrl-Z or killpg of it leaves us running
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._stream = await anyio.abc.SocketStream.from_socket(ours)
        send, receive = anyio.create_memory_object_stream[bytes](1024)
        self._outbox = send
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._read, name="almost_raft exec reader")
        tg.start_soon(self._write, receive, name="almost_raft exec writer")
        with anyio.move_on_after(_READY_TIMEOUT):
            await self._ready.wait()
        if not self._ready.is_set():
            await self.__aexit__(None, None, None)
            raise RuntimeError("the --exec supervisor did not start")
        return self

    def _supervisor_command(self, fd: int) -> list[str]:
        script = Path(__file__).with_name("_supervisor.py")
        # -I -S: the supervisor needs only the standard library; start it fast.
        head = (
            [sys.executable, "-I", "-S", str(script)]
            if script.is_file()
            else [sys.executable, "-m", "almost_raft._supervisor"]
        )
        return [
            *head,
            "--fd",
            str(fd),
            "--parent",
            str(os.getpid()),
            "--kill-after",
            repr(self.kill_after),
            "--max-lease",
            repr(self.election_timeout),
            "--",
            *self.command,
        ]

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Tell the supervisor to end (killing any child at once) and wait for it."""
        self._closing = True
        process = self._process
        try:
            with anyio.CancelScope(shield=True):
                run = self._current
                self._send({"op": "shutdown"})
                if process is not None:
                    with anyio.move_on_after(self.kill_after + _CONFIRM_SLACK):
                        await process.wait()
                    if process.returncode is None:
                        logger.error("node %r: the --exec supervisor did not end; killing it", self.node_id)
                        self._kill_group_directly(run)
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()
                        await process.wait()
        finally:
            if self._outbox is not None:
                self._outbox.close()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
                await self._tg.__aexit__(None, None, None)
            with anyio.CancelScope(shield=True):
                if self._stream is not None:
                    await anyio.aclose_forcefully(self._stream)
                if process is not None:
                    await process.aclose()

    def attach(self, state: RaftElectionState) -> None:
        """Follow *state*: the node whose lease the child runs under.

        If its election ends while it leads (cancelled, or failing), the
        child is killed and confirmed gone before the node hands over.
        """
        self._state = state
        state.runtime.before_hand_over = self._before_hand_over

    async def _before_hand_over(self) -> None:
        """The election ends while leading: the child goes before ``TimeoutNow`` does."""
        self.begin_shutdown()
        run = self._current
        if run is None or run.exited.is_set():
            return
        self._send({"op": "kill"})
        with anyio.move_on_after(_CONFIRM_SLACK):
            await run.exited.wait()

    def begin_shutdown(self) -> None:
        """No child is started from now on."""
        self._stopping = True

    def kill_now(self) -> None:
        """SIGKILL the running child's process group at once (a second Ctrl-C)."""
        if self._current is not None:
            self._send({"op": "kill"})

    def stats(self) -> dict[str, object]:
        """The child's state and counters, for ``/status`` and ``/metrics``."""
        run = self._current
        last = self.last_exit
        return {
            "command": list(self.command),
            "running": run is not None and run.pid is not None and not run.exited.is_set(),
            "pid": None if run is None else run.pid,
            "term": None if run is None else run.term,
            "starts": self.starts,
            "exits": dict(self.exits),
            "last_exit": None
            if last is None
            else {"term": last.term, "code": last.code, "by": last.by, "monotonic": last.at},
        }

    # ------------------------------------------------------------- plumbing

    def _send(self, message: dict[str, object]) -> None:
        if self._outbox is None:
            return
        try:
            self._outbox.send_nowait((json.dumps(message) + "\n").encode())
        except anyio.WouldBlock:
            logger.warning("node %r: the --exec supervisor is not reading; dropped %s", self.node_id, message["op"])
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def _write(self, outbox: MemoryObjectReceiveStream[bytes]) -> None:
        assert self._stream is not None
        async with outbox:
            async for data in outbox:
                try:
                    await self._stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return

    async def _read(self) -> None:
        assert self._stream is not None
        buffer = b""
        while True:
            try:
                data = await self._stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                break
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    message = json.loads(line)
                except ValueError:
                    logger.warning("node %r: unreadable line from the --exec supervisor: %r", self.node_id, line[:100])
                    continue
                if isinstance(message, dict):
                    self._on_message(message)
        if not self._closing:
            logger.error("node %r: the --exec supervisor went away; stopping", self.node_id)
            self._kill_group_directly(self._current)
            run = self._current
            if run is not None and not run.exited.is_set():
                self._finish(run, ChildEvent("exited", run.run, run.term, run.pid, time.monotonic(), by="supervisor"))
            self.failed.set()

    def _kill_group_directly(self, run: _Run | None) -> None:
        """The fallback when the supervisor cannot do it: SIGKILL the child's group from here."""
        if run is None or run.pid is None or run.exited.is_set():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.pid, signal.SIGKILL)

    def _on_message(self, message: dict[str, object]) -> None:
        what = message.get("ev")
        if what == "ready":
            self._ready.set()
            return
        at = message.get("at")
        run_id = message.get("run")
        if not isinstance(what, str) or not isinstance(run_id, int) or not isinstance(at, float):
            return
        term = message.get("term")
        pid = message.get("pid")
        code = message.get("code")
        event = ChildEvent(
            what=what,
            run=run_id,
            term=term if isinstance(term, int) else -1,
            pid=pid if isinstance(pid, int) else None,
            at=at,
            code=code if isinstance(code, int) else None,
            by=str(message["by"]) if "by" in message else None,
            signal=str(message["signal"]) if "signal" in message else None,
            detail=str(message.get("why") or message.get("error") or "") or None,
        )
        run = self._current
        if run is not None and run.run == run_id:
            if what == "started":
                run.pid = event.pid
                run.started_at = at
                self.starts += 1
            elif what in ("exited", "refused"):
                self._finish(run, event)
                return
        self._report(event)

    def _finish(self, run: _Run, event: ChildEvent) -> None:
        if run.exited.is_set():
            return
        run.result = event
        if event.what == "exited":
            by = event.by or "self"
            self.exits[by] = self.exits.get(by, 0) + 1
            self.last_exit = event
        run.exited.set()
        self._report(event)

    def _report(self, event: ChildEvent) -> None:
        if event.what == "signalled":
            logger.info(
                "node %r term %d: %s to child %s (%s)", self.node_id, event.term, event.signal, event.pid, event.detail
            )
        if self._on_event is not None:
            self._on_event(event)

    # ----------------------------------------------------------------- work

    async def work(self, lease: Lease) -> None:
        """Run the child while *lease* holds; give to ``run_while_leader``.

        Returns when the child exited by itself and ``on_exit`` is ``resign``
        (after asking for a handover) or ``stay``; with ``restart`` it starts
        the child again after a growing delay.  Cancelled when the lease is
        lost or the node stops; the child is then stopped, and confirmed gone,
        before this returns.
        """
        delay = RESTART_DELAY
        while not self._stopping and not self.failed.is_set():
            started = anyio.current_time()
            result = await self._run_child(lease)
            if result is None:  # refused: the lease ended before the start; wait to be cancelled
                await anyio.sleep(self.election_timeout)
                continue
            # A child stopped by the supervisor (say the node stalled and the lease was about to
            # end, then was renewed) did not choose to exit: run it again whatever --on-exit says.
            if self.on_exit == "restart" or result.by != "self":
                delay = RESTART_DELAY if anyio.current_time() - started >= RESTART_RESET_AFTER else delay
                logger.info(
                    "node %r term %d: the child exited (%s, %s); restarting in %.1f s",
                    self.node_id,
                    lease.term,
                    result.code,
                    result.by,
                    delay,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX)
                continue
            if self.on_exit == "resign":
                state = self._state
                if state is not None and state.role is Role.LEADER:
                    logger.info(
                        "node %r term %d: the child exited (%s); handing leadership over",
                        self.node_id,
                        lease.term,
                        result.code,
                    )
                    state.transfer_leadership()
            return

    async def _run_child(self, lease: Lease) -> ChildEvent | None:
        """Start a child, follow it until it exits by itself; on cancellation stop it and wait for its end."""
        state = self._state
        assert state is not None, "ExecRunner.attach(state) first"
        if not lease.valid() or self._stopping:
            await anyio.sleep(self.election_timeout)  # cancelled meanwhile as the lease is gone
            return None
        self._runs += 1
        count = self._runs_in_term[1] + 1 if self._runs_in_term[0] == lease.term else 1
        self._runs_in_term = (lease.term, count)
        run = _Run(self._runs, lease.term, to_monotonic(state.lease_expires_at))
        self._current = run
        env = {
            "ALMOST_RAFT_TERM": str(lease.term),
            "ALMOST_RAFT_NODE_ID": str(self.node_id),
            "ALMOST_RAFT_LEADER": "1",
            "ALMOST_RAFT_RUN": str(count),
            "ALMOST_RAFT_KILL_AFTER": repr(self.kill_after),
        }
        self._send({"op": "start", "run": run.run, "term": run.term, "deadline": run.deadline, "env": env})
        try:
            await self._follow(run, lease)
        finally:
            if not run.exited.is_set():
                with anyio.CancelScope(shield=True):
                    await self._stop(run, lease)
            self._current = None
        result = run.result
        if result is None or result.what == "refused":
            return None
        return result

    async def _follow(self, run: _Run, lease: Lease) -> None:
        """Wait until *run* ends, sending each renewed lease deadline meanwhile."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renew, run, lease)
            await run.exited.wait()
            tg.cancel_scope.cancel()

    async def _renew(self, run: _Run, lease: Lease) -> None:
        state = self._state
        assert state is not None
        while True:
            if lease.valid():
                deadline = to_monotonic(state.lease_expires_at)
                if deadline > run.deadline:
                    run.deadline = deadline
                    self._send({"op": "renew", "run": run.run, "deadline": deadline})
            elif time.monotonic() < run.deadline:
                # The lease ended before its deadline: given up for a handover, or a newer term.
                # Another node may win at once, so the child must go at once.
                self._send({"op": "kill"})
                return
            else:
                return  # the deadline passed: the supervisor is already on it
            await state.wait_changed()

    async def _stop(self, run: _Run, lease: Lease) -> None:
        """Stop *run* (shielded by the caller) and wait until the supervisor confirms its group is gone."""
        if lease.valid():
            # A planned stop: the lease still holds and is still renewed while the child shuts down.
            grace = self.stop_timeout
            self._send({"op": "stop", "run": run.run, "grace": grace})
        else:
            grace = 0.0
            self._send({"op": "kill"})
        with anyio.move_on_after(grace + _CONFIRM_SLACK):
            await self._follow(run, lease)
        if not run.exited.is_set():
            logger.error(
                "node %r term %d: the supervisor did not confirm the end of child %s; killing its group from here",
                self.node_id,
                run.term,
                run.pid,
            )
            self._kill_group_directly(run)
            self._finish(run, ChildEvent("exited", run.run, run.term, run.pid, time.monotonic(), by="supervisor"))
            self.failed.set()


def default_kill_after(election_timeout: float) -> float:
    """The default ``--kill-after``: a quarter of ``T``."""
    return election_timeout / 4


def check_kill_after(kill_after: float, election_timeout: float, heartbeat_interval: float) -> str | None:
    """Why *kill_after* cannot work with these timings, or ``None`` when it can.

    The lease is renewed once per heartbeat round, and lasts a little less
    than ``T`` from the round's send time; just before a renewal about
    ``T - heartbeat_interval`` is left.  A SIGTERM that early would stop a
    child whose lease is about to be renewed.
    """
    room = election_timeout * 0.98 - heartbeat_interval
    if not (0 < kill_after < room) or math.isnan(kill_after):
        return (
            f"--kill-after ({kill_after:g} s) must be below the election timeout less one heartbeat interval "
            f"(about {max(room, 0):.3g} s here), or the child would get SIGTERM between two renewals of a healthy lease"
        )
    return None
