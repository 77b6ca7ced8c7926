"""A child command for the ``--exec`` tests and benchmark: it records when it runs, and whether it ran alone.

Run by the supervisor as ``python _child.py --log FILE --lock FILE [...]``.
Each record is one JSON line appended to ``--log`` (one ``write`` each, so
lines of different processes never mix), with ``time.monotonic()`` in ``t``
and the child's ``ALMOST_RAFT_*`` environment:

* ``start``: it took the lock.  ``overlap`` first, if another child (or one
  of its processes) still held it: that is the bug the runner exists to
  prevent.  The lock is an ``flock`` on ``--lock``, which the kernel releases
  only when every process holding it has ended, so it covers the whole
  process group.
* ``tick`` every ``--tick`` seconds; ``sigterm`` when SIGTERM arrives.
* ``end``, written by a witness process outside the child's process group,
  when the last process holding the write end of a pipe (the child and its
  own children) has ended: the moment the child's whole group was gone,
  however it died (SIGKILL included).

Uses the standard library only.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import time


def append(path: str, record: dict[str, object]) -> None:
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def start_witness(log: str, base: dict[str, object]) -> int:
    """Fork the witness; return the write end of its pipe (keep it open while we live)."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        os.close(w)
        os.close(ready_r)
        os.setsid()  # out of the child's process group: the group's SIGKILL must not reach it
        os.write(ready_w, b"!")
        os.close(ready_w)
        while os.read(r, 4096):
            pass
        append(log, {**base, "ev": "end", "t": time.monotonic()})
        os._exit(0)
    os.close(r)
    os.close(ready_w)
    os.read(ready_r, 1)  # the witness has left our group
    os.close(ready_r)
    return w


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--lock", required=True)
    parser.add_argument("--tick", type=float, default=0.01)
    parser.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM")
    parser.add_argument("--term-delay", type=float, default=0.0, help="on SIGTERM, exit this much later")
    parser.add_argument("--grandchild", action="store_true", help="start a child of our own that ignores SIGTERM")
    parser.add_argument("--exit-after", type=float, default=None, help="exit by ourselves after this long")
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--say", default=None, help="print this on stdout and stderr at start")
    args = parser.parse_args()
    env = os.environ
    base: dict[str, object] = {
        "node": env.get("ALMOST_RAFT_NODE_ID"),
        "term": int(env.get("ALMOST_RAFT_TERM", "-1")),
        "run": int(env.get("ALMOST_RAFT_RUN", "0")),
        "leader": env.get("ALMOST_RAFT_LEADER"),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
    }
    start_witness(args.log, base)
    lock = os.open(args.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        append(args.log, {**base, "ev": "overlap", "t": time.monotonic()})
        fcntl.flock(lock, fcntl.LOCK_EX)
    append(args.log, {**base, "ev": "start", "t": time.monotonic()})
    if args.say is not None:
        print(f"{args.say} from term {base['term']}", flush=True)
        print(f"{args.say} on stderr", file=sys.stderr, flush=True)

    def on_term(signum: int, frame: object) -> None:
        append(args.log, {**base, "ev": "sigterm", "t": time.monotonic()})
        if not args.ignore_term:
            time.sleep(args.term_delay)
            os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if args.grandchild and os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        append(args.log, {**base, "ev": "grandchild", "t": time.monotonic(), "grandchild": os.getpid()})
        while True:
            time.sleep(1)
    started = time.monotonic()
    while True:
        append(args.log, {**base, "ev": "tick", "t": time.monotonic()})
        if args.exit_after is not None and time.monotonic() - started >= args.exit_after:
            append(args.log, {**base, "ev": "exit", "t": time.monotonic()})
            sys.exit(args.exit_code)
        time.sleep(args.tick)


if __name__ == "__main__":
    main()
