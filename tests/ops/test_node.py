"""``almost_raft.node.run_node``: the README recipe over real processes, and run_node in one process on both backends."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest

from almost_raft import Role
from almost_raft.leadership import Lease
from almost_raft.node import NodeStartError, RunningNode, run_node
from tests.network._procs import free_ports

from .conftest import kill_leftovers

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "leader_job_tcp.py"


def example_code() -> str:
    text = EXAMPLE.read_text(encoding="utf-8")
    text = re.sub(r'^""".*?"""\n', "", text, count=1, flags=re.S)
    return text.replace("from __future__ import annotations\n", "").strip()


def test_readme_recipe_is_the_example_and_short() -> None:
    code = example_code()
    assert code in (ROOT / "README.md").read_text(encoding="utf-8")
    assert len([line for line in code.splitlines() if line.strip()]) < 25


class Proc:
    """One example process and the lines it printed, with the time each arrived."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append((time.monotonic(), line.rstrip()))

    def terms(self) -> list[int]:
        return [int(m.group(1)) for _, line in list(self.lines) if (m := re.search(r"term (\d+), working", line))]


@pytest.fixture
def example_procs(tmp_path: Path) -> Iterator[dict[str, Proc]]:
    procs: dict[str, Proc] = {}
    ids = ["a", "b", "c"]
    ports = dict(zip(ids, free_ports(3), strict=True))
    for node_id in ids:
        peers = [f"{p}=127.0.0.1:{ports[p]}" for p in ids if p != node_id]
        procs[node_id] = Proc([node_id, f"127.0.0.1:{ports[node_id]}", *peers], tmp_path)
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.popen.poll() is None:
                proc.popen.kill()
            proc.popen.wait(10)
            assert proc.popen.stdout is not None
            proc.thread.join(5)
            proc.popen.stdout.close()
        kill_leftovers(tmp_path)


def wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_the_recipe_runs_one_job_and_hands_it_over(example_procs: dict[str, Proc]) -> None:
    procs = example_procs
    wait_for(lambda: any(p.terms() for p in procs.values()), 20, "a node to work")
    worker = next(node_id for node_id, p in procs.items() if p.terms())
    first_term = procs[worker].terms()[-1]
    assert all(not p.terms() for node_id, p in procs.items() if node_id != worker)
    procs[worker].popen.send_signal(signal.SIGTERM)
    assert procs[worker].popen.wait(10) == 0, procs[worker].lines
    wait_for(lambda: any(p.terms() for n, p in procs.items() if n != worker), 10, "another node to work")
    second = next(node_id for node_id, p in procs.items() if node_id != worker and p.terms())
    assert procs[second].terms()[0] > first_term
    assert (procs["a"].popen.poll(), procs["b"].popen.poll(), procs["c"].popen.poll()).count(None) == 2


@dataclass
class Interval:
    node: str
    term: int
    start: float
    end: float | None = None


async def test_run_node_stops_the_work_before_handing_over(tmp_path: Path) -> None:
    """hand_over(), stop() and cancellation: each time the old work has ended before the next one starts."""
    intervals: list[Interval] = []

    async def work(lease: Lease) -> None:
        interval = Interval(str(lease.leader_id), lease.term, anyio.current_time())
        intervals.append(interval)
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)  # a clean-up that takes a while
                interval.end = anyio.current_time()

    ids = ["a", "b", "c"]
    ports = dict(zip(ids, free_ports(4), strict=False))
    status_port = free_ports(1)[0]
    handles: dict[str, RunningNode] = {}
    scopes: dict[str, anyio.CancelScope] = {}

    async def node(node_id: str, *, task_status: anyio.abc.TaskStatus[RunningNode]) -> None:
        with anyio.CancelScope() as scopes[node_id]:
            await run_node(
                work,
                node_id=node_id,
                listen=f"127.0.0.1:{ports[node_id]}",
                peers={p: f"127.0.0.1:{ports[p]}" for p in ids if p != node_id},
                storage=tmp_path / f"{node_id}.state",
                handle_signals=False,
                status_listen=f"127.0.0.1:{status_port}" if node_id == "a" else None,
                task_status=task_status,
            )

    async def current(after: Interval | None = None) -> Interval:
        with anyio.fail_after(10):
            while True:
                if intervals and intervals[-1].end is None and intervals[-1] is not after:
                    return intervals[-1]
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        for node_id in ids:
            handles[node_id] = await tg.start(node, node_id)
        assert handles["a"].port == ports["a"]
        async with httpx.AsyncClient() as client:
            with anyio.fail_after(10):
                while True:
                    if (await client.get(f"http://127.0.0.1:{status_port}/readyz")).status_code == 200:
                        break
                    await anyio.sleep(0.05)
        first = await current()
        handles[first.node].hand_over()
        second = await current(first)
        assert second.node != first.node
        assert second.term > first.term
        assert handles[first.node].state.role is Role.FOLLOWER
        handles[second.node].stop()
        third = await current(second)
        assert third.term > second.term
        scopes[third.node].cancel()
        fourth_running = [i for i in ids if i not in (second.node, third.node)]
        assert len(fourth_running) == 1  # a single node left: no quorum, nobody works
        await anyio.sleep(0.3)
        assert intervals[-1].end is not None
        tg.cancel_scope.cancel()
    ordered = sorted(intervals, key=lambda i: i.start)
    for before, after in itertools.pairwise(ordered):
        assert before.end is not None
        assert before.end <= after.start, f"{before} overlaps {after}"


async def test_run_node_start_errors(tmp_path: Path) -> None:
    bad = tmp_path / "a.state"
    bad.write_text("not json")
    port = free_ports(1)[0]
    with pytest.raises(NodeStartError, match="storage"):
        await run_node(None, node_id="a", listen=f"127.0.0.1:{port}", peers={}, storage=bad, handle_signals=False)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(
                partial(run_node, None, node_id="a", listen=f"127.0.0.1:{port}", peers=[], handle_signals=False)
            )
            with pytest.raises(NodeStartError, match="cannot listen"):
                await run_node(
                    None, node_id="b", listen=f"127.0.0.1:{port}", peers=["a=127.0.0.1:1"], handle_signals=False
                )
            tg.cancel_scope.cancel()
    with pytest.raises(ValueError, match="ID=HOST:PORT"):
        await run_node(None, node_id="a", listen="127.0.0.1:0", peers=["b"], handle_signals=False)
