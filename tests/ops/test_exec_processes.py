"""``python -m almost_raft ... --exec -- COMMAND``: real node processes, real children, real signals.

Every child is ``_child.py``: it takes an ``flock`` that the kernel holds until
its whole process group is gone, and a witness outside the group records the
moment the group ended, however it died.  So "no two children ever ran at
once" is checked twice: no child found the lock taken, and each child's end
is before the next child's start (``check_children``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ._exec_procs import LEASE, SLACK, ExecCluster, T, check_children, poll

pytestmark = pytest.mark.slow

IDS = ["a", "b", "c"]


def stop_node(cluster: ExecCluster, node_id: str, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    cluster[node_id].signal(signum)
    return cluster[node_id].wait(timeout)


def test_handovers_run_one_child_at_a_time_with_growing_terms(exec_cluster: Callable[..., ExecCluster]) -> None:
    """SIGTERM to the leader: its child stops first (it takes 0.2 s here), then the next leader's child starts."""
    cluster = exec_cluster(IDS, child_args=["--term-delay", "0.2", "--say", "hello"])
    cluster.start()
    min_term = 0
    for _ in range(3):
        child = cluster.wait_child(min_term=min_term)
        leader = cluster[child.node]
        stopped_at = time.monotonic()
        assert stop_node(cluster, child.node) == 0
        took = time.monotonic() - stopped_at
        assert took < 0.2 + 2.0, f"{child.node} took {took:.2f} s to stop"
        exited = cluster.child_events(child.node, "exited")
        assert exited[-1]["by"] == "stop"
        # No child is started once shutdown has begun.
        assert len(cluster.child_events(child.node, "started")) == len(exited)
        new = cluster.wait_child(not_node=child.node, min_term=child.term + 1)
        finished = next(c for c in cluster.log.children() if c.pid == child.pid)
        assert finished.sigterm is not None
        assert finished.end is not None
        assert finished.end - finished.sigterm >= 0.2  # it had its time to stop
        assert finished.end < (new.start or 0)
        min_term = new.term
        # The child's stdout and stderr are the node's.
        assert f"hello from term {child.term}\n" in leader.bad_lines
        assert "hello on stderr" in leader.stderr_text()
        leader.start(cluster.args(child.node))  # back to three nodes
    check_children(cluster.log)


def test_sigusr1_stops_the_child_then_hands_over_and_stays(exec_cluster: Callable[..., ExecCluster]) -> None:
    cluster = exec_cluster(IDS)
    cluster.start()
    child = cluster.wait_child()
    cluster[child.node].signal(signal.SIGUSR1)
    new = cluster.wait_child(not_node=child.node, min_term=child.term + 1)
    exited = poll(lambda: cluster.child_events(child.node, "exited"), 5, "the node to report the end")
    assert exited[-1]["by"] == "stop"
    assert cluster[child.node].running
    cluster.wait_agreed(IDS, min_term=new.term)
    check_children(cluster.log)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigstopped_leaders_child_is_killed_before_the_new_leaders_starts(
    exec_cluster: Callable[..., ExecCluster], backend: str
) -> None:
    """The frozen node cannot act: its supervisor kills the child (ignoring SIGTERM, with a child of its own) by the deadline.

    On trio the lease deadline is converted from trio's clock, which has an offset, to the monotonic clock.
    """
    cluster = exec_cluster(IDS, child_args=["--ignore-term", "--grandchild"], node_args=["--backend", backend])
    cluster.start()
    child = cluster.wait_child()
    poll(lambda: next(c for c in cluster.log.children() if c.pid == child.pid).grandchild, 5, "the grandchild")
    cluster[child.node].signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    new = cluster.wait_child(not_node=child.node, min_term=child.term + 1)
    old = next(c for c in cluster.log.children() if c.pid == child.pid)
    assert old.sigterm is not None, "the frozen node's supervisor sent no SIGTERM"
    assert old.end is not None, "the frozen node's supervisor did not stop its child"
    assert old.end - frozen_at < LEASE + SLACK, f"the child ended {old.end - frozen_at:.3f} s after the freeze"
    assert old.end - old.sigterm >= T / 4 - 0.02  # SIGTERM came kill_after (T/4) before the SIGKILL
    assert old.end < (new.start or 0)
    cluster[child.node].signal(signal.SIGCONT)
    # The resumed node learns that its child is gone (ended by the lease) and follows.
    poll(lambda: cluster.child_events(child.node, "exited"), 10, "the resumed node to see its child's end")
    assert cluster.child_events(child.node, "exited")[-1]["by"] == "lease"
    cluster.wait_agreed(IDS, not_leader=child.node, min_term=new.term)
    check_children(cluster.log)


def test_cut_off_leader_kills_a_slow_child_and_its_children_by_the_deadline(
    exec_cluster: Callable[..., ExecCluster],
) -> None:
    """Every follower frozen: the leader loses its lease; its child needs longer than its budget to stop."""
    cluster = exec_cluster(IDS, child_args=["--term-delay", "2", "--grandchild"])
    cluster.start()
    child = cluster.wait_child()
    poll(lambda: next(c for c in cluster.log.children() if c.pid == child.pid).grandchild, 5, "the grandchild")
    followers = [i for i in IDS if i != child.node]
    for node_id in followers:
        cluster[node_id].signal(signal.SIGSTOP)
    cut_at = time.monotonic()
    old = poll(
        lambda: next((c for c in cluster.log.children() if c.pid == child.pid and c.end is not None), None),
        5,
        "the cut-off leader's child to end",
    )
    assert old.sigterm is not None, "no SIGTERM before the SIGKILL"
    assert old.end is not None
    # SIGTERM came kill_after (T/4) before the lease's end; SIGKILL at the lease's end, the group with it.
    assert old.end - cut_at < LEASE + SLACK
    assert old.end - old.sigterm >= T / 4 - 0.02
    exited = poll(lambda: cluster.child_events(child.node, "exited"), 5, "the node to report the end")
    assert exited[-1]["by"] == "lease"
    for node_id in followers:
        cluster[node_id].signal(signal.SIGCONT)
    # A new child: of a new leader, or of the same one if it got its lease back in the same term (run 2).
    cluster.wait_child(after=child)
    check_children(cluster.log)


def test_sigkilled_leaders_child_is_gone_before_the_new_leaders_starts(
    exec_cluster: Callable[..., ExecCluster],
) -> None:
    cluster = exec_cluster(IDS, child_args=["--ignore-term", "--grandchild"])
    cluster.start()
    child = cluster.wait_child()
    killed_at = time.monotonic()
    assert stop_node(cluster, child.node, signal.SIGKILL) == -signal.SIGKILL
    new = cluster.wait_child(not_node=child.node, min_term=child.term + 1)
    old = next(c for c in cluster.log.children() if c.pid == child.pid)
    assert old.end is not None
    assert old.end - killed_at < SLACK * 3, "the node's death should kill its child at once"
    assert old.end < (new.start or 0)
    check_children(cluster.log)


def test_sigterm_while_not_leader_exits_at_once(exec_cluster: Callable[..., ExecCluster]) -> None:
    cluster = exec_cluster(IDS)
    cluster.start("a")  # alone among three: it can never lead
    cluster.wait_for(lambda: cluster["a"].latest(), 10, "a's first line")
    started = time.monotonic()
    assert stop_node(cluster, "a") == 0
    assert time.monotonic() - started < 1.5
    cluster.start("b", "c")  # a follower of a running cluster, too
    child = cluster.wait_child()
    follower = next(i for i in ("b", "c") if i != child.node)
    started = time.monotonic()
    assert stop_node(cluster, follower) == 0
    assert time.monotonic() - started < 1.5
    assert not cluster.child_events(follower, "started")
    assert not cluster.child_events("a", "started")


@pytest.mark.parametrize("on_exit", ["restart", "resign", "stay"])
def test_what_happens_when_the_child_exits_by_itself(exec_cluster: Callable[..., ExecCluster], on_exit: str) -> None:
    cluster = exec_cluster(
        IDS, child_args=["--exit-after", "0.3", "--exit-code", "3"], node_args=["--on-exit", on_exit]
    )
    cluster.start()
    first = cluster.wait_child()
    poll(lambda: cluster.child_events(first.node, "exited"), 5, "the child to exit")
    assert cluster.child_events(first.node, "exited")[0]["code"] == 3
    if on_exit == "restart":  # the same leader runs it again, in the same term, as run 2
        second = poll(lambda: next((c for c in cluster.log.children() if c.run == 2), None), 5, "the restarted child")
        assert (second.node, second.term) == (first.node, first.term)
    elif on_exit == "resign":  # another node leads and runs it
        second = cluster.wait_child(not_node=first.node, min_term=first.term + 1)
    else:  # stay: still the leader, no child
        time.sleep(4 * T)
        assert len(cluster.log.children()) == 1
        latest = cluster[first.node].latest()
        assert latest is not None
        assert (latest["term"], latest["leader_id"]) == (first.term, first.node)
    check_children(cluster.log)


def test_a_killed_supervisor_takes_the_child_group_with_it_and_stops_the_node(
    exec_cluster: Callable[..., ExecCluster],
) -> None:
    """Nobody should SIGKILL the supervisor; if it happens, no child runs unsupervised and the node exits 1."""
    cluster = exec_cluster(IDS, child_args=["--grandchild"])
    cluster.start()
    child = cluster.wait_child()
    poll(lambda: next(c for c in cluster.log.children() if c.pid == child.pid).grandchild, 5, "the grandchild")
    stat = Path(f"/proc/{child.pid}/stat").read_text(encoding="ascii")
    supervisor = int(stat.rsplit(")", 1)[1].split()[1])
    killed_at = time.monotonic()
    os.kill(supervisor, signal.SIGKILL)
    assert cluster[child.node].wait(10) == 1
    old = poll(
        lambda: next((c for c in cluster.log.children() if c.pid == child.pid and c.end is not None), None),
        5,
        "the child's group to end",
    )
    assert (old.end or 0) - killed_at < SLACK * 3
    cluster.wait_child(not_node=child.node, min_term=child.term + 1)
    check_children(cluster.log)
