"""A harness that races input against the election's timers, in real time, and records what happened.

One trial runs node ``"a"``'s real ``raft_election`` (or ``ElectionHost``)
against two scripted peers, ``"b"`` and ``"c"``, for a few election
timeouts.  Everything that can yield does, a random number of times: the
storage's ``save`` (sometimes through ``anyio.to_thread``, as ``FileStorage``
does), the peers' ``send_message``, and the peers' answers, which come back
into ``control`` from tasks of their own.  Input is aimed at the instants
where the core's deadlines fall: vote requests of a higher term, vote
answers, ``TransferLeadership``, ``AddNode``, pauses, and crashes followed
by a restart from storage.

Everything the node does that matters is appended to one log, in the order
it happened: each save when it has become durable, each message when it is
handed to a peer.  ``check`` then verifies, from that order alone, that
nothing left the node before the save it depends on, that the node ended on
the state its storage holds, and that a node restarted from that storage
cannot vote twice in a term.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import checkpoint

from almost_raft import (
    AddNode,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Message,
    RaftElectionState,
    RequestVote,
    Role,
    TimeoutNow,
    TransferLeadership,
    VoteResponse,
    raft_election,
)
from almost_raft._core import Election
from almost_raft._messages import NodeId

if TYPE_CHECKING:
    from almost_raft.host import ElectionHost

T = 0.010
"""The election timeout of a trial (real time)."""

# ("save", None, HardState) once durable; ("send", to_id, message) when handed to a peer;
# ("crash", None, None) when an incarnation was killed.
Entry = tuple[str, NodeId | None, object]


async def _yield(rng: random.Random, most: int) -> None:
    for _ in range(rng.randrange(most + 1)):
        await checkpoint()


@dataclass
class Trial:
    """What one trial did, for ``check``."""

    seed: int
    pre_vote: bool
    log: list[Entry] = field(default_factory=list)
    final: HardState | None = None
    """The node's (term, voted_for) when its last incarnation ended."""
    stored: HardState | None = None
    """What its storage held at the end."""
    incarnations: int = 0
    inputs: int = 0


class RacyStorage:
    """A ``Storage`` whose calls yield at random, sometimes through a worker thread."""

    def __init__(self, rng: random.Random, trial: Trial) -> None:
        self._rng = rng
        self._trial = trial
        self.state: HardState | None = None

    async def load(self) -> HardState | None:
        await _yield(self._rng, 2)
        return self.state

    async def save(self, hard_state: HardState) -> None:
        rng = self._rng
        await _yield(rng, 3)
        if rng.random() < 0.3:
            await anyio.to_thread.run_sync(time.sleep, 0)
        self.state = hard_state
        self._trial.log.append(("save", None, hard_state))  # durable from here on
        await _yield(rng, 2)


class RacyPeer:
    """A scripted peer: records what it is sent, yields, and answers into node a's ``control``."""

    def __init__(self, node_id: NodeId, rng: random.Random, trial: Trial, answer: Callable[[Message], None]) -> None:
        self._node_id = node_id
        self._rng = rng
        self._trial = trial
        self._answer = answer

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    async def send_message(self, message: Message) -> None:
        self._trial.log.append(("send", self._node_id, message))
        await _yield(self._rng, 3)
        self._answer(message)


class RacyNowaitPeer(RacyPeer):
    """A peer that also has the optional ``send_message_nowait``, which sometimes says "use send_message"."""

    def send_message_nowait(self, message: Message) -> None:
        if self._rng.random() < 0.3:
            raise anyio.WouldBlock
        self._trial.log.append(("send", self._node_id, message))
        self._answer(message)


def _reply(peer: NodeId, message: Message, rng: random.Random) -> Message | None:
    """How scripted peer *peer* answers *message* from node a (it grants most requests)."""
    if isinstance(message, RequestVote):
        granted = rng.random() < 0.7
        term = message.term if granted else message.term - 1
        return VoteResponse(max(term, 0), peer, granted, pre_vote=message.pre_vote)
    if isinstance(message, Heartbeat):
        return HeartbeatResponse(message.term, peer, True, message.seq)
    if isinstance(message, TimeoutNow):
        return RequestVote(message.term + 1, peer, transfer=True)
    return None


def _racing_input(rng: random.Random, term: int) -> object:
    """One input aimed at a deadline: each kind the node must handle while a save may be under way."""
    peer = rng.choice(["b", "c"])
    kind = rng.randrange(6)
    if kind == 0:
        return RequestVote(term + rng.randrange(1, 3), peer, pre_vote=rng.random() < 0.3)
    if kind == 1:
        return VoteResponse(term + rng.randrange(0, 2), peer, True, pre_vote=rng.random() < 0.5)
    if kind == 2:
        return TransferLeadership(rng.choice([None, "b", "c"]))
    if kind == 3:
        return Heartbeat(term + rng.randrange(0, 2), peer, rng.randrange(1, 4))
    if kind == 4:
        return "pause" if rng.random() < 0.5 else "resume"
    return "add"


async def run_trial(seed: int, *, host: ElectionHost | None = None) -> Trial:
    """Run one trial of node a against racy peers b and c; the seed fixes every random choice."""
    rng = random.Random(seed)
    trial = Trial(seed=seed, pre_vote=rng.random() < 0.5)
    storage = RacyStorage(random.Random(f"{seed}/storage"), trial)
    options: dict[str, Any] = {
        "election_timeout": T,
        "election_timeout_max": T * rng.choice([1.0, 1.0, 1.5]),
        "heartbeat_interval": T / 4,
        "message_timeout": T,
        "min_nodes": 3,
        "pre_vote": trial.pre_vote,
        "storage": storage,
    }
    async with anyio.create_task_group() as tg:
        node = await _Incarnation.start(tg, rng, trial, options, host)
        crashes = 1 if rng.random() < 0.4 else 0
        for _ in range(rng.randrange(3, 7)):
            core = node.state.core
            if core is None or node.state.role is Role.TERMINATED:
                break
            # Aim at the next deadline, give or take a fraction of a millisecond.
            target = core.next_deadline + rng.uniform(-0.0015, 0.0015)
            target = min(target, anyio.current_time() + 2 * T)
            await anyio.sleep(max(0.0, target - anyio.current_time()))
            if crashes and rng.random() < 0.3:
                crashes -= 1
                await node.crash()
                node = await _Incarnation.start(tg, rng, trial, options, host)
                continue
            node.feed(_racing_input(rng, node.state.term))
        node.control.close()  # the node ends, its pending save done first
        await node.ended()
        core = node.state.core
        assert core is not None
        trial.final = HardState(core.term, core.voted_for)
        trial.stored = storage.state
        tg.cancel_scope.cancel()
    return trial


class _Incarnation:
    """One run of node a: its state, its control, its peers, and the scope that crashes it."""

    def __init__(self, tg: TaskGroup, rng: random.Random, trial: Trial, options: dict[str, Any]) -> None:
        trial.incarnations += 1
        self.tg = tg
        self.rng = rng
        self.trial = trial
        self.peer_rng = random.Random(f"{trial.seed}/peers/{trial.incarnations}")
        self.scope = anyio.CancelScope()
        self.peer_class = RacyNowaitPeer if rng.random() < 0.5 else RacyPeer
        peers = [self.peer(p) for p in ("b", "c")]
        self.state, self.control = RaftElectionState.init(
            "a", nodes=peers, rng=random.Random(f"{trial.seed}/a/{trial.incarnations}"), **options
        )

    @classmethod
    async def start(
        cls, tg: TaskGroup, rng: random.Random, trial: Trial, options: dict[str, Any], host: ElectionHost | None
    ) -> _Incarnation:
        node = cls(tg, rng, trial, options)

        async def run(*, task_status: TaskStatus[None]) -> None:
            with node.scope:
                if host is None:
                    await raft_election(node.state, task_status=task_status)
                else:
                    await host.run_election(node.state, task_status=task_status)

        await tg.start(run)
        return node

    def peer(self, peer_id: NodeId) -> RacyPeer:
        return self.peer_class(peer_id, self.peer_rng, self.trial, lambda message: self.answer(peer_id, message))

    def answer(self, peer_id: NodeId, message: Message) -> None:
        """Peer *peer_id* answers *message* later, from a task of its own (lost once a is gone)."""
        reply = _reply(peer_id, message, self.peer_rng)
        if reply is None or self.scope.cancel_called:
            return

        async def later() -> None:
            await _yield(self.peer_rng, 4)
            with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.control.send_nowait(reply)

        self.tg.start_soon(later)

    def feed(self, item: object) -> None:
        state = self.state
        self.trial.inputs += 1
        if item == "pause":
            state.pause_candidacy()
        elif item == "resume":
            state.resume_candidacy()
        elif item == "add":
            # A new handle for a known peer (a reconnect): it replaces the old one.
            self.control.send_nowait(AddNode(self.peer(self.rng.choice(["b", "c"]))))
        elif isinstance(item, TransferLeadership) and self.rng.random() < 0.5:
            state.transfer_leadership(item.target_id)
        else:
            self.control.send_nowait(item)  # type: ignore[arg-type]

    async def crash(self) -> None:
        self.scope.cancel()
        await self.ended()
        self.control.close()
        self.trial.log.append(("crash", None, None))

    async def ended(self) -> None:
        with anyio.fail_after(5):
            while self.state.role is not Role.TERMINATED:
                await self.state.wait_changed()


# ----------------------------------------------------------------- checks


def check(trial: Trial, config_of: Callable[[], Any] | None = None) -> list[str]:
    """Every way the recorded order breaks a rule, in words (empty: none)."""
    problems: list[str] = []
    durable: set[tuple[int, NodeId | None]] = {(0, None)}
    highest = 0
    granted: dict[int, NodeId] = {}
    for kind, to, item in trial.log:
        if kind == "save":
            assert isinstance(item, HardState)
            durable.add((item.term, item.voted_for))
            highest = max(highest, item.term)
            continue
        if kind != "send":
            continue
        message = cast(Message, item)
        if isinstance(message, RequestVote) and not message.pre_vote:
            if (message.term, "a") not in durable:
                problems.append(f"RequestVote for term {message.term} sent before a's own vote was saved")
        elif isinstance(message, VoteResponse) and message.granted and not message.pre_vote:
            if (message.term, to) not in durable:
                problems.append(f"vote for {to!r} in term {message.term} sent before it was saved")
            earlier = granted.setdefault(message.term, to)  # type: ignore[arg-type]
            if earlier != to:
                problems.append(f"voted for {earlier!r} and {to!r} in term {message.term}")
        # Every other message carries a's own term, which must be durable: a
        # granted pre-vote names the requested term, a pre-vote request the next one.
        pre = isinstance(message, RequestVote) and message.pre_vote
        pre = pre or (isinstance(message, VoteResponse) and message.pre_vote and message.granted)
        if not pre and message.term > highest:
            problems.append(f"{type(message).__name__} of term {message.term} sent before that term was saved")
    if trial.final is not None:
        stored = trial.stored or HardState(0, None)
        if (stored.term, stored.voted_for) != (trial.final.term, trial.final.voted_for):
            problems.append(f"the node ended on {trial.final} but its storage holds {stored}")
    return problems


def restarted_votes_twice(trial: Trial, config: Any) -> bool:
    """Whether a node restarted from what the storage holds grants a vote to another candidate in that term."""
    stored = trial.stored
    if stored is None or stored.voted_for is None:
        return False
    other = "c" if stored.voted_for != "c" else "b"
    core = Election(config, peers=["b", "c"], hard_state=stored, rng=random.Random(0), now=0.0)
    out = core.step(RequestVote(stored.term, other), 10 * T)  # well after its start-up stickiness
    return any(isinstance(m, VoteResponse) and m.granted for _, m in out.sends)
