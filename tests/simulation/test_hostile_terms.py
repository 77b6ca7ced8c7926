"""Issue 14 item 1 in the simulator: no hostile message leaves the cluster unable to elect.

The frame of the report, ``RequestVote(2**63 - 1, "c", transfer=True)``,
sent by a host that forges member ids, made every node of a cluster take the
largest term the wire can carry and save it: no next term could ever be sent.
Here it is injected into a simulated cluster (while a leader is healthy, and
while an election is under way), with other hostile terms, and the cluster
must go on electing leaders in terms that leave room to grow, under the
safety checker, across a full restart from storage.

The messages are injected with the simulator's network (``Simulation._send``:
there is no public way to forge a message, on purpose).
"""

from __future__ import annotations

from almost_raft import Heartbeat, HeartbeatResponse, RequestVote, TimeoutNow, VoteResponse
from almost_raft._messages import MAX_TERM, MAX_TERM_STEP, WIRE_MAX_TERM, Message
from almost_raft.testing import FixedDelay, LinkFaults, Simulation

from .helpers import T, wait_leader

HOSTILE: list[Message] = [
    RequestVote(WIRE_MAX_TERM, "c", transfer=True),  # the frame of the report
    RequestVote(MAX_TERM, "c", transfer=True),
    RequestVote(MAX_TERM + 1, "c"),
    Heartbeat(MAX_TERM, "c", 1),
    Heartbeat(WIRE_MAX_TERM, "c", 1),
    HeartbeatResponse(WIRE_MAX_TERM, "c", False, 1),
    VoteResponse(WIRE_MAX_TERM, "c", False),
    TimeoutNow(MAX_TERM, "c"),
]


def _inject(sim: Simulation, message: Message) -> None:
    sender = message.sender
    for node_id in sim.node_ids:
        if node_id != sender:
            sim._send(sender, node_id, message)


def _terms(sim: Simulation) -> list[int]:
    return [sim.core(i).term for i in sim.node_ids]


def _check_room(sim: Simulation, bound: int) -> None:
    for node_id in sim.node_ids:
        term = sim.core(node_id).term
        assert term <= bound, f"{node_id!r} is at term {term}"
        saved = sim.node(node_id).saved
        assert saved is None or saved.term <= bound


def test_the_max_term_transfer_frame_does_not_stop_elections() -> None:
    sim = Simulation(3, seed=14, link=LinkFaults(delay=FixedDelay(0.001)))
    leader = wait_leader(sim)
    start = max(_terms(sim))
    # 1. While a leader is healthy: every node is sticky.
    for message in HOSTILE:
        _inject(sim, message)
    sim.run_for(3 * T)
    # Forged heartbeats depose the leader (a host without credentials can do
    # that), but each message moved a node by MAX_TERM_STEP at most.
    bound = start + len(HOSTILE) * (MAX_TERM_STEP + 1) + 10
    _check_room(sim, bound)
    wait_leader(sim)
    # 2. While an election is under way: nobody is sticky any more.
    sim.crash(leader)
    sim.run_for(2.2 * T)
    for message in HOSTILE:
        _inject(sim, message)
    sim.run_for(2 * T)
    sim.restart(leader)
    after = wait_leader(sim, timeout=5.0)
    bound += len(HOSTILE) * (MAX_TERM_STEP + 1) + 10
    _check_room(sim, bound)
    # 3. A full restart from storage, then the leader hands over: still elections.
    for node_id in sim.node_ids:
        sim.crash(node_id)
    for node_id in sim.node_ids:
        sim.restart(node_id)
    after = wait_leader(sim, timeout=5.0)
    term = sim.core(after).term
    sim.transfer_leadership(after)
    sim.run_for(T)
    new = wait_leader(sim, timeout=5.0)
    assert new != after
    assert sim.core(new).term > term
    _check_room(sim, bound + 10)
    assert sim.violation is None
    assert max(_terms(sim)) < MAX_TERM - 2**40, "room for 2**40 more elections"


def test_the_frame_of_the_report_changes_nothing() -> None:
    """Its term is above MAX_TERM: bad input on every node, dropped and counted, nothing else changes."""
    sim = Simulation(3, seed=7, link=LinkFaults(delay=FixedDelay(0.001)))
    wait_leader(sim)
    before = {i: sim.core(i).counters.messages_rejected for i in sim.node_ids}
    terms = _terms(sim)
    _inject(sim, RequestVote(WIRE_MAX_TERM, "c", transfer=True))
    sim.run_for(0.01)
    assert _terms(sim) == terms
    for node_id in ("a", "b"):
        assert sim.core(node_id).counters.messages_rejected == before[node_id] + 1
