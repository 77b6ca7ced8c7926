"""Helpers for the ``--exec`` process tests: clusters whose nodes run ``_child.py``, and its records.

``ExecCluster`` is a ``ProcCluster`` (see ``tests/network/_procs.py``) whose
nodes all run ``--exec -- python _child.py ...``; every child appends its
records to one shared log (``ChildLog``), which is how the tests see when
each child ran, and whether two ever ran at once.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.network._procs import ProcCluster, Record

CHILD = Path(__file__).with_name("_child.py")
T = 0.2
"""Election timeout of the process tests."""
LEASE = T * 0.99 / 1.01
"""The lease those nodes hold (clock drift 0.01)."""
SLACK = 0.15
"""Scheduling slack allowed on top of a deadline, for a loaded 2-core machine."""

R = TypeVar("R")


@dataclass
class Child:
    """What one child recorded."""

    node: str
    term: int
    run: int
    pid: int
    pgid: int = 0
    start: float | None = None
    end: float | None = None
    sigterm: float | None = None
    overlap: float | None = None
    grandchild: bool = False
    last_tick: float | None = None
    events: list[str] = field(default_factory=list)


class ChildLog:
    """The shared log the children write."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def children(self) -> list[Child]:
        """Every child that started, in the order they started."""
        found: dict[int, Child] = {}
        for r in self.records():
            child = found.setdefault(r["pid"], Child(r["node"], r["term"], r["run"], r["pid"], r["pgid"]))
            child.events.append(r["ev"])
            if r["ev"] in ("start", "end", "sigterm", "overlap"):
                setattr(child, r["ev"], r["t"])
            elif r["ev"] == "tick":
                child.last_tick = r["t"]
            elif r["ev"] == "grandchild":
                child.grandchild = True
        return sorted((c for c in found.values() if c.start is not None), key=lambda c: c.start or 0.0)

    def running(self) -> list[Child]:
        return [c for c in self.children() if c.end is None]


class ExecCluster(ProcCluster):
    """A ``ProcCluster`` whose nodes run ``_child.py`` under ``--exec``."""

    def __init__(
        self,
        workdir: Path,
        ids: Sequence[str],
        *,
        child_args: Sequence[str] = (),
        node_args: Sequence[str] = (),
        election_timeout: float = T,
    ) -> None:
        self.log = ChildLog(workdir / "children.log")
        self.lock = workdir / "children.lock"
        command = [sys.executable, str(CHILD), "--log", str(self.log.path), "--lock", str(self.lock), *child_args]
        super().__init__(workdir, ids, election_timeout=election_timeout, extra=[*node_args, "--exec", "--", *command])

    def child_events(self, node_id: str, what: str | None = None) -> list[Record]:
        with self.cond:
            return [
                r
                for r in self.nodes[node_id].records
                if r.get("event") == "child" and (what is None or r["what"] == what)
            ]

    def wait_child(
        self, *, not_node: str | None = None, min_term: int = 0, after: Child | None = None, timeout: float = 15.0
    ) -> Child:
        """Wait for a running child (of a node other than *not_node*, in a term >= *min_term*, started after *after*)."""

        def find() -> Child | None:
            overlaps = [r for r in self.log.records() if r["ev"] == "overlap"]
            assert not overlaps, f"a child found another child's process group still running: {overlaps}"
            for child in self.log.running():
                if after is not None and (child.term, child.run) <= (after.term, after.run):
                    continue
                if child.node != not_node and child.term >= min_term and self.nodes[child.node].running:
                    return child
            return None

        return poll(find, timeout, f"a running child (not of {not_node}, term >= {min_term})", self.describe)


def poll(predicate: Callable[[], R | None], timeout: float, what: str, describe: Callable[[], str] = str) -> R:
    """Call *predicate* every 10 ms until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{describe()}")
        time.sleep(0.01)


def check_children(log: ChildLog) -> list[Child]:
    """The safety of ``--exec``: one child at a time, terms only growing; returns the children."""
    children = log.children()
    assert children, "no child ever ran"
    for child in children:
        assert child.overlap is None, f"{child} started while another child's process group still held the lock"
        assert child.pgid == child.pid, f"{child} does not lead a process group of its own"
    for before, after in itertools.pairwise(children):
        assert before.end is not None, f"{before} still ran when {after} started"
        assert after.start is not None
        assert before.end < after.start, f"{before} ended at {before.end}, after {after} started at {after.start}"
        if after.node != before.node:
            assert after.term > before.term, f"a new leader's child has term {after.term} <= {before.term}"
        else:
            assert (after.term, after.run) > (before.term, before.run), f"{after} does not follow {before}"
    return children
