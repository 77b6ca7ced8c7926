"""The ``--exec`` supervisor on its own: this test plays the node, over the same socket protocol.

Its deadlines are checked against the moment the child's whole process group
was gone (``_child.py``'s witness), on the monotonic clock it shares with the
supervisor.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import almost_raft._supervisor as supervisor_module
from almost_raft._exec import to_monotonic

from ._exec_procs import CHILD, ChildLog, poll
from .conftest import kill_leftovers

KILL_AFTER = 0.1
MAX_LEASE = 0.5
LATE = 0.1  # how late after its deadline a signal may land on a loaded 2-core machine


class Supervised:
    """A supervisor process driven by the test."""

    def __init__(self, workdir: Path, child_args: list[str]) -> None:
        self.log = ChildLog(workdir / "children.log")
        self.lock = workdir / "lock"
        command = [
            sys.executable,
            str(CHILD),
            "--log",
            str(self.log.path),
            "--lock",
            str(self.lock),
            *child_args,
        ]
        self.sock, theirs = socket.socketpair()
        self.popen = subprocess.Popen(
            [
                sys.executable,
                supervisor_module.__file__,
                "--fd",
                str(theirs.fileno()),
                "--parent",
                str(os.getpid()),
                "--kill-after",
                str(KILL_AFTER),
                "--max-lease",
                str(MAX_LEASE),
                "--",
                *command,
            ],
            pass_fds=[theirs.fileno()],
            start_new_session=True,
        )
        theirs.close()
        self.sock.settimeout(10)
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        assert self.next_event()["ev"] == "ready"

    def send(self, **message: object) -> None:
        self.sock.sendall((json.dumps(message) + "\n").encode())

    def next_event(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, "the supervisor closed its end"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    def wait_event(self, what: str) -> dict[str, Any]:
        while True:
            event = self.next_event()
            if event["ev"] == what:
                return event

    def start(self, deadline: float, run: int = 1) -> dict[str, Any]:
        self.send(
            op="start", run=run, term=5, deadline=deadline, env={"ALMOST_RAFT_TERM": "5", "ALMOST_RAFT_RUN": str(run)}
        )
        return self.next_event()

    def close(self) -> None:
        self.sock.close()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Any]:
    made: list[Supervised] = []

    def make(*child_args: str) -> Supervised:
        made.append(Supervised(tmp_path, list(child_args)))
        return made[-1]

    try:
        yield make
    finally:
        for sup in made:
            sup.close()
        kill_leftovers(tmp_path)


def lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def ended(sup: Supervised) -> float:
    children = poll(lambda: [c for c in sup.log.children() if c.end is not None], 5, "the child's end")
    end = children[0].end
    assert end is not None
    return end


def test_a_child_ignoring_sigterm_and_its_own_child_die_at_the_deadline(supervised: Any) -> None:
    sup = supervised("--ignore-term", "--grandchild")
    deadline = time.monotonic() + 0.4
    started = sup.start(deadline)
    assert started["ev"] == "started"
    poll(lambda: any(c.grandchild for c in sup.log.children()), 5, "the grandchild")
    term = sup.wait_event("signalled")
    assert term["signal"] == "SIGTERM"
    assert deadline - KILL_AFTER <= term["at"] < deadline - KILL_AFTER + LATE
    kill = sup.wait_event("signalled")
    assert kill["signal"] == "SIGKILL"
    assert deadline <= kill["at"] < deadline + LATE
    exited = sup.wait_event("exited")
    assert exited["by"] == "lease"
    assert exited["code"] == -9
    # Reported only once the whole group is gone: nobody holds the children's lock any more.
    assert lock_is_free(sup.lock)
    end = ended(sup)  # the witness's record: a little after the group's end, never before
    assert deadline <= end < deadline + LATE, f"the group ended {end - deadline:+.3f} s from the deadline"


def test_renewals_keep_the_child_and_silence_kills_it(supervised: Any) -> None:
    sup = supervised()
    deadline = time.monotonic() + 0.3
    assert sup.start(deadline)["ev"] == "started"
    until = time.monotonic() + 0.8
    while time.monotonic() < until:
        deadline = time.monotonic() + 0.3
        sup.send(op="renew", run=1, deadline=deadline)
        time.sleep(0.05)
    assert not [c for c in sup.log.children() if c.sigterm is not None], "SIGTERM despite renewals"
    exited = sup.wait_event("exited")
    assert exited["by"] == "lease"
    child = sup.log.children()[0]
    assert child.sigterm is not None
    assert deadline - KILL_AFTER <= child.sigterm < deadline - KILL_AFTER + LATE
    assert ended(sup) < deadline + LATE  # it exits on SIGTERM, before the SIGKILL


def test_the_node_going_away_kills_the_child_at_once(supervised: Any) -> None:
    sup = supervised("--ignore-term")
    assert sup.start(time.monotonic() + MAX_LEASE)["ev"] == "started"
    poll(lambda: sup.log.children(), 5, "the child to start")
    closed_at = time.monotonic()
    sup.sock.close()
    assert ended(sup) - closed_at < LATE * 2
    assert sup.popen.wait(5) == 0


def test_a_planned_stop_gives_the_grace_period_and_renewals_do_not_lift_it(supervised: Any) -> None:
    sup = supervised("--ignore-term")
    assert sup.start(time.monotonic() + 0.4)["ev"] == "started"
    poll(lambda: sup.log.children(), 5, "the child to start")
    stopped_at = time.monotonic()
    sup.send(op="stop", run=1, grace=0.3)
    for _ in range(6):
        sup.send(op="renew", run=1, deadline=time.monotonic() + 0.4)
        time.sleep(0.05)
    exited = sup.wait_event("exited")
    assert exited["by"] == "stop"
    end = ended(sup)
    assert stopped_at + 0.3 <= end < stopped_at + 0.3 + LATE


def test_deadlines_are_clamped_and_late_starts_refused(supervised: Any) -> None:
    sup = supervised("--ignore-term")
    refused = sup.start(time.monotonic() - 0.01, run=1)
    assert refused["ev"] == "refused"
    asked = time.monotonic()
    assert sup.start(asked + 3600, run=2)["ev"] == "started"  # a confused node cannot grant an hour
    assert ended(sup) < asked + MAX_LEASE + LATE
    sup.send(op="shutdown")
    assert sup.popen.wait(5) == 0


async def test_lease_deadlines_cross_to_the_monotonic_clock() -> None:
    """trio's clock has an offset from ``time.monotonic()``: a deadline handed to the supervisor is converted."""
    now = anyio.current_time()
    assert abs(to_monotonic(now + 0.25) - (time.monotonic() + 0.25)) < 0.005
