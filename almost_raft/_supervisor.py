"""The supervisor of ``--exec``: a small process between a node and its child.

Theory of operation
===================

A node that holds the leader's lease may run a child command; the child must
be stopped before any other node can be elected.  The node itself cannot be
trusted to stop it in time: a node frozen by SIGSTOP, a stalled event loop or
a swapped-out process sends nothing.  So the deadline is enforced here, in a
process of its own (its own session, so a Ctrl-Z or SIGSTOP aimed at the
node's process group does not freeze it), which only needs the monotonic
clock it shares with the node:

* The node starts a child with ``start`` and the lease deadline, then sends
  every renewed deadline (``renew``), converted to ``time.monotonic()``.
* At ``deadline - kill_after`` the whole process group of the child gets
  SIGTERM; at the deadline, SIGKILL.  Nobody needs to tell the supervisor: a
  silent node means an expiring lease.  The lease ends before any other node
  can be elected (voters refuse votes for ``T`` after they last heard the
  leader), so the child is dead before another node's child can start.
* ``stop`` (a planned stop: the lease is still held and renewed) sends SIGTERM
  at once and SIGKILL after a grace period, never later than the deadline.
  ``kill`` sends SIGKILL at once (the node gave its lease up early).
* The child never outlives the node: end of file on the control socket, or
  the parent-death signal (``PR_SET_PDEATHSIG``, checked against
  ``getppid()``: it also fires when the thread that spawned us exits), kill
  the child's group at once.  The child gets ``PR_SET_PDEATHSIG(SIGKILL)``
  too, in case this process dies.
* A child's run is over only when its whole process group is gone.  This
  process is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so the orphans of
  a killed group are reparented to it and reaped, and ``killpg(pgid, 0)``
  failing with ``ESRCH`` means every member is gone.  Only then does the node
  hear ``exited``, and only then may it hand leadership over.

It ignores SIGINT, SIGTERM and the job-control stops: it takes orders only
from its node and ends with it.  It uses the standard library only.

Protocol: JSON objects, one per line, over a Unix socket pair (the node's
end and ``--fd`` here).  Node to supervisor::

    {"op": "start", "run": 1, "term": 7, "deadline": 1234.5, "env": {...}}
    {"op": "renew", "run": 1, "deadline": 1234.6}
    {"op": "stop", "run": 1, "grace": 10.0}
    {"op": "kill"}
    {"op": "shutdown"}

Supervisor to node: ``ready``, ``started``, ``refused``, ``signalled`` and
``exited``, each with ``"at"`` (``time.monotonic()``); ``exited`` says why the
run ended (``"by"``: ``self``, ``lease``, ``stop``, ``kill``, ``node``) and the
child's ``code`` (negative: the signal that ended it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_POLL = 0.005  # seconds between checks that a dying process group is gone
_PARENT_DEATH_SIGNAL = signal.SIGHUP
_AT_ONCE = -math.inf  # a stop_limit that is always due

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover - no C library to load
    _libc = None


def prctl(option: int, value: int) -> bool:
    """Call Linux ``prctl(option, value)``; False where it is not available or fails."""
    if _libc is None:
        return False
    return int(_libc.prctl(option, value, 0, 0, 0)) == 0


def log(message: str) -> None:
    """One line on stderr (the node's stderr)."""
    with contextlib.suppress(OSError):
        os.write(2, f"almost_raft supervisor [{os.getpid()}]: {message}\n".encode())


@dataclass
class Run:
    """One child process and its process group."""

    run: int
    term: int
    pid: int
    deadline: float  # the lease's end: SIGKILL to the group then, whatever else happens
    kill_after: float  # SIGTERM that long before the deadline
    stop_limit: float = math.inf  # after a SIGTERM: SIGKILL at this time at the latest
    code: int | None = None  # the child's exit status once reaped
    termed: bool = False
    killed: bool = False
    why: str = "self"  # why the run ended, if we ended it

    @property
    def pgid(self) -> int:
        return self.pid

    @property
    def term_at(self) -> float:
        return self.deadline - self.kill_after

    @property
    def kill_at(self) -> float:
        return min(self.deadline, self.stop_limit)


class Supervisor:
    """The event loop of the supervisor process."""

    def __init__(self, sock: socket.socket, parent: int, command: Sequence[str], kill_after: float, max_lease: float):
        self.sock = sock
        self.parent = parent
        self.command = list(command)
        self.kill_after = kill_after
        self.max_lease = max_lease
        self.run: Run | None = None
        self.shutting_down = False
        self.node_gone = False
        self.parent_died = False
        self.buffer = b""
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    # ------------------------------------------------------------ messages

    def emit(self, event: str, **fields: object) -> None:
        """Send an event to the node; never blocks (a frozen node must not freeze us)."""
        if self.node_gone:
            return
        data = (json.dumps({"ev": event, "at": time.monotonic(), **fields}) + "\n").encode()
        try:
            self.sock.send(data)
        except BlockingIOError:
            log(f"the node is not reading; dropped event {event!r}")
        except OSError:
            self.node_gone = True

    def on_message(self, msg: dict[str, object]) -> None:
        op = msg.get("op")
        now = time.monotonic()
        run = self.run
        if op == "start":
            self.start(msg, now)
        elif op == "renew":
            if run is not None and msg.get("run") == run.run and run.code is None:
                # A later deadline never lifts a SIGKILL already due after a SIGTERM (stop_limit).
                run.deadline = max(run.deadline, self.clamp(msg.get("deadline"), now))
        elif op == "stop":
            if run is not None and msg.get("run") == run.run:
                grace = msg.get("grace")
                grace = float(grace) if isinstance(grace, (int, float)) and grace >= 0 else self.kill_after
                if not run.termed:
                    run.why = "stop"
                    self.terminate(run, now, grace, "stop")
        elif op in ("kill", "shutdown"):
            self.shutting_down = self.shutting_down or op == "shutdown"
            if run is not None:
                if run.code is None and run.why == "self":
                    run.why = "kill"
                run.stop_limit = _AT_ONCE
        else:
            log(f"unknown message from the node: {msg!r}")

    def clamp(self, value: object, now: float) -> float:
        """A deadline never later than one lease from now (a defence against a confused node)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return -1.0
        return min(float(value), now + self.max_lease)

    # ------------------------------------------------------------- children

    def start(self, msg: dict[str, object], now: float) -> None:
        run_id = msg.get("run")
        term = msg.get("term")
        if not isinstance(run_id, int) or not isinstance(term, int):
            log(f"bad start message: {msg!r}")
            return
        if self.shutting_down or self.run is not None:
            why = "shutting down" if self.shutting_down else "a child is still running"
            self.emit("refused", run=run_id, why=why)
            return
        deadline = self.clamp(msg.get("deadline"), now)
        if deadline <= now:
            self.emit("refused", run=run_id, why="the lease has already ended")
            return
        env = dict(os.environ)
        extra = msg.get("env")
        if isinstance(extra, dict):
            env.update({str(k): str(v) for k, v in extra.items()})
        me = os.getpid()

        def child_setup() -> None:  # runs in the child between fork and exec
            os.setpgid(0, 0)
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != me:  # we died before the prctl: do not run unsupervised
                os._exit(125)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGTSTP):
                signal.signal(signum, signal.SIG_DFL)
            for signum in (signal.SIGTTIN, signal.SIGTTOU):
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())

        try:
            popen = subprocess.Popen(
                self.command, env=env, stdin=subprocess.DEVNULL, preexec_fn=child_setup, close_fds=True
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log(f"cannot start {self.command[0]!r}: {exc}")
            self.emit("exited", run=run_id, term=term, pid=None, code=127, by="self", error=str(exc))
            return
        # We reap with waitpid() ourselves; keep Popen from trying later.
        popen.returncode = 0
        self.run = Run(run=run_id, term=term, pid=popen.pid, deadline=deadline, kill_after=self.kill_after)
        self.emit("started", run=run_id, term=term, pid=popen.pid, deadline=deadline)

    def terminate(self, run: Run, now: float, grace: float, why: str) -> None:
        """SIGTERM to the group now; SIGKILL after *grace* (never after the deadline)."""
        run.termed = True
        run.stop_limit = min(run.stop_limit, now + grace)
        self.signal_group(run, signal.SIGTERM, why)

    def signal_group(self, run: Run, signum: int, why: str) -> None:
        try:
            os.killpg(run.pgid, signum)
        except ProcessLookupError:
            return
        except PermissionError as exc:  # pragma: no cover - a group member changed its user
            log(f"cannot signal process group {run.pgid}: {exc}")
            return
        self.emit("signalled", run=run.run, term=run.term, pid=run.pid, signal=signal.Signals(signum).name, why=why)

    def group_alive(self, run: Run) -> bool:
        try:
            os.killpg(run.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - exists, not ours to signal
            return True
        return True

    def reap(self) -> None:
        """Reap every ended child (ours and the orphans reparented to us)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.run
            if run is not None and pid == run.pid and run.code is None:
                run.code = os.waitstatus_to_exitcode(status)
                if not run.termed and self.group_alive(run):
                    # The child ended by itself; what it left in its group goes too.
                    self.terminate(run, time.monotonic(), self.kill_after, "leftovers")

    def check_timers(self, now: float) -> None:
        run = self.run
        if run is None:
            return
        if not run.killed and now >= run.kill_at:
            if run.why == "self" and run.code is None:
                run.why = "lease"
            run.killed = True
            run.termed = True
            self.signal_group(run, signal.SIGKILL, run.why)
        elif not run.termed and now >= run.term_at:
            run.why = "lease"
            self.terminate(run, now, self.kill_after, "lease")
        if run.code is not None and not self.group_alive(run):
            self.run = None
            self.emit("exited", run=run.run, term=run.term, pid=run.pid, code=run.code, by=run.why)

    def next_timeout(self, now: float) -> float | None:
        run = self.run
        if run is None:
            return None
        if run.killed or run.code is not None:
            return _POLL  # waiting for the rest of the group to go (reaped as orphans)
        wake = run.kill_at if run.termed else min(run.term_at, run.kill_at)
        return max(0.0, wake - now)

    # ------------------------------------------------------------------ loop

    def node_lost(self, why: str) -> None:
        if self.node_gone and self.shutting_down:
            return
        self.node_gone = True
        self.shutting_down = True
        if self.run is not None and not self.run.killed:
            log(f"{why}: killing the child's process group {self.run.pgid} at once")
            self.run.why = "node"
            self.run.stop_limit = _AT_ONCE

    def on_signal(self, signum: int, frame: object) -> None:
        if signum == _PARENT_DEATH_SIGNAL and os.getppid() != self.parent:
            self.parent_died = True
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"\0")

    def serve(self) -> int:
        self.sock.setblocking(False)
        self.selector.register(self.sock, selectors.EVENT_READ, "node")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        for signum in (signal.SIGCHLD, _PARENT_DEATH_SIGNAL):
            signal.signal(signum, self.on_signal)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        prctl(PR_SET_PDEATHSIG, _PARENT_DEATH_SIGNAL)
        if os.getppid() != self.parent:
            self.node_lost("the node died before the supervisor started")
        else:
            self.emit("ready", pid=os.getpid())
        while True:
            self.reap()
            if self.parent_died:
                self.node_lost("the node died")
            self.check_timers(time.monotonic())
            if self.shutting_down and self.run is None:
                return 0
            timeout = self.next_timeout(time.monotonic())
            for key, _ in self.selector.select(timeout):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                elif not self.node_gone:
                    self.read_node()

    def read_node(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(self.sock)
            self.node_lost("the node closed its end (it exited or died)")
            return
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:
                log(f"unreadable line from the node: {line[:100]!r}")
                continue
            if isinstance(msg, dict):
                self.on_message(msg)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="almost_raft supervisor", description="Run by --exec; not for direct use.")
    parser.add_argument("--fd", type=int, required=True, help="the control socket, inherited from the node")
    parser.add_argument("--parent", type=int, required=True, help="the node's process id")
    parser.add_argument("--kill-after", type=float, required=True, help="SIGTERM this long before the deadline")
    parser.add_argument("--max-lease", type=float, required=True, help="no deadline further than this from now")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    sock = socket.socket(fileno=args.fd)
    return Supervisor(sock, args.parent, command, args.kill_after, args.max_lease).serve()


if __name__ == "__main__":
    sys.exit(main())
