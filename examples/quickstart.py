"""Three nodes in one process, wired by hand through the in-memory transport: the README's quick start."""

from __future__ import annotations

import anyio

from almost_raft import AddNode, RaftElectionState, raft_election
from almost_raft.transports import MemoryNetwork

NodeId = str | int


async def main() -> None:
    network = MemoryNetwork()  # your transport: a Node per peer, and incoming messages fed into `control`
    ids = ["a", "b", "c"]
    states: dict[NodeId, RaftElectionState] = {}
    async with anyio.create_task_group() as tg:
        for node_id in ids:
            state, control = RaftElectionState.init(
                node_id,
                election_timeout=0.150,  # T: each round draws a timeout from [T, 2T)
                heartbeat_interval=0.050,
                message_timeout=0.050,
                min_nodes=3,  # no election until the cluster has 3 members (self included)
                max_nodes=7,
            )
            network.register(node_id, control)  # messages for node_id go into its control
            await tg.start(raft_election, state)
            for peer in ids:
                if peer != node_id:  # peers may come and go at run time
                    await control.send(AddNode(network.node(peer, sender_id=node_id)))
            states[node_id] = state

        leader_id: NodeId | None = None
        events = states["a"].subscribe()  # LeaderChanged events, starting with the current view
        async for change in events:
            print(f"a sees term {change.term}, leader {change.leader_id}")
            if change.leader_id is not None:
                leader_id = change.leader_id
                break
        assert leader_id is not None
        leader = states[leader_id]
        while not leader.holds_lease:  # leads, and a quorum has acknowledged it: safe for exclusive work
            await leader.wait_changed()
        print(
            f"{leader.self_id} is {leader.role.value} and holds its lease for {leader.status().lease_remaining:.3f} s"
        )
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
