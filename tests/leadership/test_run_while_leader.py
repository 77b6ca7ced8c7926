"""``run_while_leader`` and ``leading``: leader-only work that stops before anyone else can lead.

Every test records the start and the end of each run of the work, and each
election won, in one shared ``Journal`` stamped with ``anyio.current_time()``.
On trio (``MockClock``, virtual time) the stamps are exact, so the tests
assert times; on asyncio they assert only the order of the entries and the
eventual outcome.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from almost_raft import RaftElectionState, Role
from almost_raft._messages import NodeId
from almost_raft.leadership import Lease, LeaseLost, leading, run_while_leader
from almost_raft.testing import LocalCluster

T = 0.150  # election timeout
HEARTBEAT = 0.050
MESSAGE_TIMEOUT = 0.050
LATENCY = 0.001  # one-way; > 0 so that causally ordered entries have distinct virtual times
LEASE = T * 0.99 / 1.01  # the default clock_drift of 0.01


@asynccontextmanager
async def make_cluster(seed: int, **options: Any) -> AsyncIterator[LocalCluster]:
    """A running 3-node ``LocalCluster``; its ``control`` streams are closed at the end."""
    settings: dict[str, Any] = {
        "election_timeout": T,
        "heartbeat_interval": HEARTBEAT,
        "message_timeout": MESSAGE_TIMEOUT,
        "latency": LATENCY,
    }
    settings.update(options)
    cluster = LocalCluster(3, seed=seed, **settings)
    try:
        async with cluster:
            yield cluster
    finally:
        # LocalCluster leaves them open: a ResourceWarning, an error here.
        for control in cluster.controls.values():
            control.close()


async def bring_back(cluster: LocalCluster, node_id: NodeId) -> None:
    """Start a crashed or stopped node again (closing the ``control`` of its last run)."""
    cluster.controls[node_id].close()
    await cluster.start(node_id)


@dataclass(frozen=True, eq=False)
class Entry:
    """One line of the journal.

    ``what`` is "start" (a run of the work began), "stop" (it ended: ``how``
    says "cancelled", "raised" or "returned"), "elected" (the node's own
    subscription reported its win) or "exited" (``async with leading`` ended).
    """

    what: str
    node: NodeId
    term: int
    at: float
    how: str = ""
    lease_held: bool = True


async def forever(lease: Lease) -> None:
    await anyio.sleep_forever()


class Journal:
    """Shared, ordered record of every node's work runs and wins."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self._changed = anyio.Event()

    def add(self, what: str, node: NodeId, term: int, *, how: str = "", lease_held: bool = True) -> Entry:
        entry = Entry(what, node, term, anyio.current_time(), how, lease_held)
        self.entries.append(entry)
        self._changed.set()
        self._changed = anyio.Event()
        return entry

    def index(self, entry: Entry) -> int:
        return next(i for i, e in enumerate(self.entries) if e is entry)

    def find(self, what: str, node: NodeId | None = None, term: int | None = None, *, since: int = 0) -> Entry | None:
        for entry in self.entries[since:]:
            if entry.what == what and node in (None, entry.node) and term in (None, entry.term):
                return entry
        return None

    def get(self, what: str, node: NodeId | None = None, term: int | None = None, *, since: int = 0) -> Entry:
        entry = self.find(what, node, term, since=since)
        assert entry is not None, f"no {what!r} entry for node={node!r} term={term!r} in {self.entries}"
        return entry

    def all(self, what: str, node: NodeId | None = None) -> list[Entry]:
        return [e for e in self.entries if e.what == what and node in (None, e.node)]

    async def wait_for(
        self, what: str, node: NodeId | None = None, term: int | None = None, *, since: int = 0
    ) -> Entry:
        while (entry := self.find(what, node, term, since=since)) is None:
            await self._changed.wait()
        return entry

    async def watch(self, state: RaftElectionState) -> None:
        """Record every win of *state*'s node, as its own subscription reports it."""
        with state.subscribe() as events:
            async for event in events:
                if event.leader_id == state.self_id:
                    self.add("elected", state.self_id, event.term)

    def work(
        self, state: RaftElectionState, body: Callable[[Lease], Awaitable[None]] = forever
    ) -> Callable[[Lease], Awaitable[None]]:
        """The work given to ``run_while_leader``: journals its start and end around *body*."""

        async def run(lease: Lease) -> None:
            # Not an assert: run_while_leader would log and swallow an AssertionError.
            held = lease.valid() and state.holds_lease and state.role is Role.LEADER and state.term == lease.term
            self.add("start", state.self_id, lease.term, lease_held=held)
            try:
                await body(lease)
            except anyio.get_cancelled_exc_class():
                self.add("stop", state.self_id, lease.term, how="cancelled")
                raise
            except Exception:
                self.add("stop", state.self_id, lease.term, how="raised")
                raise
            self.add("stop", state.self_id, lease.term, how="returned")

        return run

    def runs(self) -> list[tuple[Entry, Entry | None]]:
        """Each start with the stop that ended it (``None``: still running), in start order."""
        out: list[tuple[Entry, Entry | None]] = []
        for i, start in enumerate(self.entries):
            if start.what == "start":
                out.append((start, self.find("stop", start.node, start.term, since=i + 1)))
        return out


def attach(
    tg: TaskGroup,
    cluster: LocalCluster,
    journal: Journal,
    node_id: NodeId,
    body: Callable[[Lease], Awaitable[None]] = forever,
    **options: bool,
) -> None:
    """Run the journalled work on *node_id*'s current state with ``run_while_leader``."""
    state = cluster.states[node_id]
    tg.start_soon(journal.watch, state)
    tg.start_soon(functools.partial(run_while_leader, state, journal.work(state, body), **options))


def assert_never_two_at_once(journal: Journal, *, exact_time: bool) -> None:
    """Every run started under the lease and ended before the next run (on any node) started."""
    runs = journal.runs()
    assert runs, "the work never ran"
    for start, _ in runs:
        assert start.lease_held, f"{start} began without the lease"
    for (start, stop), (next_start, _) in itertools.pairwise(runs):
        assert stop is not None, f"{start} was still running when {next_start} began"
        assert journal.index(stop) < journal.index(next_start)
        assert stop.at <= next_start.at
        if exact_time:
            assert stop.at < next_start.at, (stop, next_start)


# --------------------------------------------------------------- exclusivity


async def test_work_runs_on_the_lease_holder_only_never_on_two_nodes(anyio_backend_name: str) -> None:
    exact = anyio_backend_name == "trio"
    rounds = 12 if exact else 4
    rng = random.Random(7)
    journal = Journal()
    async with make_cluster(seed=7) as cluster, anyio.create_task_group() as tg:
        for node_id in cluster.ids:
            attach(tg, cluster, journal, node_id)
        for i in range(rounds):
            with anyio.fail_after(5):
                leader = await cluster.wait_for_leader()
                await journal.wait_for("start", leader.leader_id, leader.term)
            # Strike at a different phase of the heartbeat each time.
            await anyio.sleep(rng.uniform(0, 2 * HEARTBEAT))
            old = leader.leader_id
            assert old is not None
            others = [n for n in cluster.ids if n != old]
            how = ("isolate", "transfer", "crash", "stop")[i % 4]
            with anyio.fail_after(5):
                if how == "isolate":
                    cluster.isolate(old)
                    new = await cluster.wait_for_leader(others, after_term=leader.term)
                    cluster.heal_all()
                elif how == "transfer":
                    cluster.states[old].transfer_leadership()
                    new = await cluster.wait_for_leader(after_term=leader.term)
                else:
                    await (cluster.crash(old) if how == "crash" else cluster.stop(old))
                    new = await cluster.wait_for_leader(others, after_term=leader.term)
                    await bring_back(cluster, old)
                    attach(tg, cluster, journal, old)
                await journal.wait_for("start", new.leader_id, new.term)
        tg.cancel_scope.cancel()
    assert_never_two_at_once(journal, exact_time=exact)
    assert len(journal.all("start")) == rounds + 1
    assert len({start.node for start in journal.all("start")}) > 1


async def test_fencing_token_grows_with_every_new_leaders_work(anyio_backend_name: str) -> None:
    rounds = 8 if anyio_backend_name == "trio" else 3

    class FencedStore:
        """Refuses a write whose token is smaller than one it has already accepted."""

        def __init__(self) -> None:
            self.highest = -1
            self.accepted: list[tuple[int, NodeId]] = []
            self.refused: list[tuple[int, NodeId]] = []

        def write(self, token: int, writer: NodeId) -> None:
            if token < self.highest:
                self.refused.append((token, writer))
                return
            self.highest = token
            self.accepted.append((token, writer))

    store = FencedStore()

    async def writer(lease: Lease) -> None:
        while True:
            lease.check()
            store.write(lease.term, lease.leader_id)
            await anyio.sleep(HEARTBEAT / 5)

    journal = Journal()
    async with make_cluster(seed=11) as cluster, anyio.create_task_group() as tg:
        for node_id in cluster.ids:
            attach(tg, cluster, journal, node_id, writer)
        for i in range(rounds):
            with anyio.fail_after(5):
                leader = await cluster.wait_for_leader()
                await journal.wait_for("start", leader.leader_id, leader.term)
            await anyio.sleep(HEARTBEAT)
            old = leader.leader_id
            assert old is not None
            with anyio.fail_after(5):
                if i % 2:
                    cluster.states[old].transfer_leadership()
                    new = await cluster.wait_for_leader(after_term=leader.term)
                else:
                    cluster.isolate(old)
                    new = await cluster.wait_for_leader([n for n in cluster.ids if n != old], after_term=leader.term)
                    cluster.heal_all()
                await journal.wait_for("start", new.leader_id, new.term)
        tg.cancel_scope.cancel()
    terms = [start.term for start in journal.all("start")]
    assert len(terms) == rounds + 1
    assert all(a < b for a, b in itertools.pairwise(terms)), terms
    assert store.refused == [], "a deposed leader's work wrote after a newer leader's"
    assert sorted({t for t, _ in store.accepted}) == terms
    assert_never_two_at_once(journal, exact_time=anyio_backend_name == "trio")


# ------------------------------------------------------- isolation, transfer


async def isolation_trial(seed: int, *, exact: bool) -> float:
    """Isolate the leader; return elected_at - cancelled_at (the new win after the old work's end)."""
    rng = random.Random(seed)
    journal = Journal()
    async with make_cluster(seed=seed) as cluster, anyio.create_task_group() as tg:
        for node_id in cluster.ids:
            attach(tg, cluster, journal, node_id)
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
            await journal.wait_for("start", leader.leader_id, leader.term)
        await anyio.sleep(rng.uniform(0, 3 * HEARTBEAT))
        old = leader.leader_id
        assert old is not None
        isolated_at = anyio.current_time()
        cluster.isolate(old)
        with anyio.fail_after(5):
            new = await cluster.wait_for_leader([n for n in cluster.ids if n != old], after_term=leader.term)
        tg.cancel_scope.cancel()
    stopped = journal.get("stop", old, leader.term)
    elected = journal.get("elected", new.leader_id, new.term)
    assert stopped.how == "cancelled"
    assert journal.index(stopped) < journal.index(elected), journal.entries
    if exact:
        # The lease ran from the last acknowledged round, sent at or before the isolation.
        assert stopped.at <= isolated_at + LEASE
        assert elected.at > stopped.at
    assert_never_two_at_once(journal, exact_time=exact)
    return elected.at - stopped.at


async def test_isolated_leader_stops_its_work_before_anyone_else_is_elected(anyio_backend_name: str) -> None:
    exact = anyio_backend_name == "trio"
    gaps = [await isolation_trial(seed, exact=exact) for seed in range(30 if exact else 3)]
    ms = sorted(1000 * g for g in gaps)
    print(
        f"\n[{anyio_backend_name}] isolation, elected_at - cancelled_at over {len(ms)} seeds: "
        f"min {ms[0]:.1f} ms, median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms "
        f"(T = {1000 * T:.0f} ms, lease {1000 * LEASE:.1f} ms, latency {1000 * LATENCY:.0f} ms)"
    )
    assert all(g > 0 for g in gaps), ms


async def test_transfer_stops_the_old_work_before_the_new_work_starts(anyio_backend_name: str) -> None:
    exact = anyio_backend_name == "trio"
    journal = Journal()
    async with make_cluster(seed=3) as cluster, anyio.create_task_group() as tg:
        for node_id in cluster.ids:
            attach(tg, cluster, journal, node_id)
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
            await journal.wait_for("start", leader.leader_id, leader.term)
        old = leader.leader_id
        assert old is not None
        target = next(n for n in cluster.ids if n != old)
        asked_at = anyio.current_time()
        cluster.states[old].transfer_leadership(target)
        with anyio.fail_after(5):
            new = await cluster.wait_for_leader(after_term=leader.term)
            started = await journal.wait_for("start", target, new.term)
        tg.cancel_scope.cancel()
    assert new.leader_id == target
    assert new.term > leader.term
    stopped = journal.get("stop", old, leader.term)
    assert stopped.how == "cancelled"
    assert journal.index(stopped) < journal.index(journal.get("elected", target)) < journal.index(started)
    if exact:
        assert stopped.at == asked_at, "the old leader gives its lease up as it sends TimeoutNow"
        assert started.at > stopped.at
    assert_never_two_at_once(journal, exact_time=exact)


# ----------------------------------------------------- work that ends itself


def raising_once() -> Callable[[Lease], Awaitable[None]]:
    calls = 0

    async def body(lease: Lease) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom in the leader's work")
        await anyio.sleep_forever()

    return body


def raised_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "almost_raft"
        and r.levelno == logging.ERROR
        and "leader work raised" in r.getMessage()
        and r.exc_info is not None
        and isinstance(r.exc_info[1], RuntimeError)
    ]


async def test_work_that_raises_is_logged_and_not_rerun_in_the_same_term(
    anyio_backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="almost_raft")
    journal = Journal()
    body = raising_once()
    async with make_cluster(seed=5) as cluster, anyio.create_task_group() as tg:
        for node_id in cluster.ids:
            attach(tg, cluster, journal, node_id, body)
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
            raised = await journal.wait_for("stop", leader.leader_id, leader.term)
        assert raised.how == "raised"
        assert leader.leader_id is not None
        state = cluster.states[leader.leader_id]
        # Many heartbeat rounds later the node still leads the same term, and
        # the work did not run again although the lease was renewed each round.
        await anyio.sleep(4 * T)
        assert cluster.agreed_leader() == leader
        assert state.holds_lease
        assert len(journal.all("start")) == 1
        assert len(raised_records(caplog)) == 1
        # It runs again after the next win: hand over and back.
        target = next(n for n in cluster.ids if n != leader.leader_id)
        state.transfer_leadership(target)
        with anyio.fail_after(5):
            second = await cluster.wait_for_leader(after_term=leader.term)
            await journal.wait_for("start", target, second.term)
        tg.cancel_scope.cancel()
    assert second.leader_id == target
    assert [s.how for _, s in journal.runs() if s is not None] == ["raised", "cancelled"]


async def test_work_that_raises_with_resign_on_error_moves_leadership(
    anyio_backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="almost_raft")
    journal = Journal()
    body = raising_once()
    async with make_cluster(seed=5) as cluster, anyio.create_task_group() as tg:
        for node_id in cluster.ids:
            attach(tg, cluster, journal, node_id, body, resign_on_error=True)
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
            raised = await journal.wait_for("stop", leader.leader_id, leader.term)
            new = await cluster.wait_for_leader(after_term=leader.term)
            started = await journal.wait_for("start", new.leader_id, new.term)
        tg.cancel_scope.cancel()
    assert raised.how == "raised"
    assert new.leader_id != leader.leader_id
    assert new.term > leader.term
    assert len(raised_records(caplog)) == 1
    assert len(journal.all("start")) == 2
    if anyio_backend_name == "trio":
        # A hand-over (TimeoutNow, vote, first heartbeat round): a few round trips, no election timeout.
        assert started.at - raised.at < 10 * LATENCY
    assert_never_two_at_once(journal, exact_time=anyio_backend_name == "trio")


def checking_after_a_long_step(teardown: anyio.Event) -> Callable[[Lease], Awaitable[None]]:
    """The README's pattern: a step that cancellation cannot reach, then ``lease.check()`` before the side effect.

    The step ends when the test tears down too: a node elected meanwhile
    would otherwise hold its lease, and the step, for ever.
    """

    async def work(lease: Lease) -> None:
        with anyio.CancelScope(shield=True):  # stands for a computation that never awaits
            while lease.valid() and not teardown.is_set():  # noqa: ASYNC110 - no event announces a lease running out by time
                await anyio.sleep(HEARTBEAT / 5)
        if teardown.is_set():
            return
        lease.check()  # raises LeaseLost before the cancellation is delivered at the next await
        raise AssertionError("the lease was valid again")

    return work


async def test_lease_lost_from_check_is_the_normal_end_of_a_lease(
    anyio_backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``LeaseLost`` from ``lease.check()``: one INFO line, no traceback, no resignation (even with resign_on_error)."""
    caplog.set_level(logging.INFO, logger="almost_raft")
    journal = Journal()
    teardown = anyio.Event()
    async with make_cluster(seed=5) as cluster, anyio.create_task_group() as tg:
        for node_id in cluster.ids:
            attach(tg, cluster, journal, node_id, checking_after_a_long_step(teardown), resign_on_error=True)
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
            await journal.wait_for("start", leader.leader_id, leader.term)
        assert leader.leader_id is not None
        state = cluster.states[leader.leader_id]
        cluster.isolate(leader.leader_id)
        with anyio.fail_after(5):
            stopped = await journal.wait_for("stop", leader.leader_id, leader.term)
            await anyio.wait_all_tasks_blocked()
        transfers = state.status().transfers_started
        teardown.set()
        tg.cancel_scope.cancel()
    assert stopped.how == "raised"  # LeaseLost went through the work's own frame
    assert transfers == 0, "LeaseLost made the node resign"
    mine = [r for r in caplog.records if r.name == "almost_raft" and "leader work" in r.getMessage()]
    lost = [r for r in mine if "leader work stopped" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in mine]
    assert lost[0].levelno == logging.INFO
    assert lost[0].exc_info is None, "logged with a traceback"
    assert f"term {leader.term}" in lost[0].getMessage()
    assert "no longer holds the lease" in lost[0].getMessage()
    assert not [r for r in mine if "raised" in r.getMessage() or r.levelno >= logging.WARNING]
    assert not [r for r in mine if "cancelled" in r.getMessage() and f"term {leader.term}" in r.getMessage()]


def returning() -> Callable[[Lease], Awaitable[None]]:
    """A work that returns at once; were it rerun in the same term, it blocks (the test then fails, not hangs)."""
    seen: set[tuple[int, NodeId]] = set()

    async def body(lease: Lease) -> None:
        if lease.token in seen:
            await anyio.sleep_forever()  # a spinning rerun loop would never let virtual time advance
        seen.add(lease.token)
        await anyio.lowlevel.checkpoint()

    return body


async def test_work_that_returns_is_not_rerun_until_a_new_term(anyio_backend_name: str) -> None:
    journal = Journal()
    async with make_cluster(seed=9) as cluster, anyio.create_task_group() as tg:
        for node_id in cluster.ids:
            attach(tg, cluster, journal, node_id, returning())
        with anyio.fail_after(5):
            first = await cluster.wait_for_leader()
            await journal.wait_for("stop", first.leader_id, first.term)
        assert first.leader_id is not None
        await anyio.sleep(4 * T)  # the lease is renewed every heartbeat round meanwhile
        assert cluster.agreed_leader() == first
        assert len(journal.all("start")) == 1
        target = next(n for n in cluster.ids if n != first.leader_id)
        cluster.states[first.leader_id].transfer_leadership(target)
        with anyio.fail_after(5):
            second = await cluster.wait_for_leader(after_term=first.term)
            await journal.wait_for("stop", target, second.term)
        cluster.states[target].transfer_leadership(first.leader_id)
        with anyio.fail_after(5):
            third = await cluster.wait_for_leader(after_term=second.term)
            await journal.wait_for("stop", first.leader_id, third.term)
        await anyio.sleep(2 * T)
        tg.cancel_scope.cancel()
    assert (second.leader_id, third.leader_id) == (target, first.leader_id)
    runs = [(start.node, start.term, stop.how if stop else None) for start, stop in journal.runs()]
    assert runs == [
        (first.leader_id, first.term, "returned"),
        (target, second.term, "returned"),
        (first.leader_id, third.term, "returned"),
    ]


@pytest.mark.parametrize("returns", [False, True], ids=["endless", "returns"])
async def test_a_lapsed_lease_stops_the_work_and_a_regained_one_restarts_it(
    anyio_backend_name: str, returns: bool
) -> None:
    """Cut the leader off for less than check-quorum needs: the lease lapses while it still leads.

    With ``clock_drift=0.4`` the lease lasts ``T * 0.6 / 1.4`` (64 ms), between
    one and two heartbeat intervals; the leader steps down only after ``T``
    (150 ms) without a quorum.  Healing as soon as the lease lapses lets the
    next heartbeat round renew it in the same term.  As the module docstring
    says, a cancelled work then runs again in that term; a finished one does not.
    """
    exact = anyio_backend_name == "trio"
    lease_duration = T * 0.6 / 1.4
    journal = Journal()
    body = returning() if returns else forever
    async with make_cluster(seed=13, clock_drift=0.4) as cluster, anyio.create_task_group() as tg:
        for node_id in cluster.ids:
            attach(tg, cluster, journal, node_id, body)
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
            first = await journal.wait_for("start", leader.leader_id, leader.term)
            if returns:
                await journal.wait_for("stop", leader.leader_id, leader.term)
        assert leader.leader_id is not None
        state = cluster.states[leader.leader_id]
        isolated_at = anyio.current_time()
        cluster.isolate(leader.leader_id)
        with anyio.fail_after(5):
            if returns:
                await anyio.sleep(max(0.0, state.lease_expires_at - anyio.current_time()))
            else:
                stopped = await journal.wait_for("stop", leader.leader_id, leader.term)
                assert stopped.how == "cancelled"
                if exact:
                    assert isolated_at < stopped.at <= isolated_at + lease_duration
        # Lapsed, but still the leader of the same term.
        assert not state.holds_lease
        assert (state.role, state.term) == (Role.LEADER, leader.term)
        healed_at = anyio.current_time()
        cluster.heal_all()
        with anyio.fail_after(5):
            if returns:
                while not state.holds_lease:
                    await state.wait_changed()
                await anyio.sleep(2 * HEARTBEAT)
            else:
                since = journal.index(first) + 1
                again = await journal.wait_for("start", leader.leader_id, leader.term, since=since)
        assert (state.role, state.term, state.status().step_downs) == (Role.LEADER, leader.term, 0)
        tg.cancel_scope.cancel()
    assert journal.all("elected") == [journal.get("elected", leader.leader_id, leader.term)]
    if returns:
        assert len(journal.all("start")) == 1
    else:
        assert again.lease_held
        assert len(journal.all("start")) == 2
        if exact:
            assert again.at - healed_at <= HEARTBEAT + 2 * LATENCY
    assert_never_two_at_once(journal, exact_time=exact)


# ------------------------------------------------------------------ leading()


async def test_leading_cancels_the_body_on_loss_and_exits_normally(anyio_backend_name: str) -> None:
    exact = anyio_backend_name == "trio"
    journal = Journal()
    leases: dict[NodeId, Lease] = {}

    async def lead(state: RaftElectionState) -> None:
        async with leading(state) as lease:
            assert lease.token == (lease.term, state.self_id)
            assert 0 < lease.remaining() <= LEASE
            lease.check()
            journal.add("start", state.self_id, lease.term, lease_held=lease.valid() and state.holds_lease)
            try:
                await anyio.sleep_forever()
            finally:
                journal.add("stop", state.self_id, lease.term, how="cancelled")
        # Reached only when the ``async with`` exits normally.
        leases[state.self_id] = lease
        journal.add("exited", state.self_id, lease.term)

    async with make_cluster(seed=17) as cluster, anyio.create_task_group() as tg:
        for node_id in cluster.ids:
            tg.start_soon(journal.watch, cluster.states[node_id])
            tg.start_soon(lead, cluster.states[node_id])
        with anyio.fail_after(5):
            leader = await cluster.wait_for_leader()
            await journal.wait_for("start", leader.leader_id, leader.term)
        old = leader.leader_id
        assert old is not None
        cluster.isolate(old)
        with anyio.fail_after(5):
            new = await cluster.wait_for_leader([n for n in cluster.ids if n != old], after_term=leader.term)
            await journal.wait_for("start", new.leader_id, new.term)
        assert new.leader_id is not None
        # A body that ends by itself: the ``async with`` ends with the lease still valid.
        async with leading(cluster.states[new.leader_id]) as still:
            pass
        assert still.valid()
        assert still.term == new.term
        tg.cancel_scope.cancel()
    assert old is not None  # LocalCluster.__aexit__ may swallow, so mypy forgets the narrowing
    exited = journal.get("exited", old, leader.term)
    assert journal.index(exited) < journal.index(journal.get("elected", new.leader_id, new.term))
    if exact:
        assert exited.at < journal.get("elected", new.leader_id, new.term).at
    lost = leases[old]
    assert not lost.valid()
    assert lost.remaining() == 0.0
    with pytest.raises(LeaseLost):
        lost.check()
    assert not still.valid()  # the cluster has stopped
    assert_never_two_at_once(journal, exact_time=exact)
    # Once the election has ended, ``leading`` cannot wait for a lease any more.
    with pytest.raises(RuntimeError, match="ended before it led"):
        async with leading(cluster.states[old]):
            pytest.fail("the body must not run")
