"""A complete transport of your own: UDP datagrams, each carrying one frame of the TCP transport's wire format.

A transport does two things: a ``Node`` per peer (how to send it a message),
and a task that feeds every message arriving from the network into
``control``.  ``encode_message`` and ``decode_frame`` (from
``almost_raft.transports``) are the codec; a stream transport would use
``FrameReader`` to cut a byte stream into frames instead.

Run ``python examples/udp_transport.py`` (``--backend trio`` for trio): three
nodes in one process, each with its own UDP socket on 127.0.0.1, elect a
leader.  Like plain TCP, this has no authentication: anyone who can send to
the ports can speak for any node.  Use it on a private network.
"""

from __future__ import annotations

import argparse

import anyio
from anyio.abc import SocketAttribute, UDPSocket
from anyio.streams.memory import MemoryObjectSendStream

from almost_raft import AddNode, ControlMessage, LeaderChanged, Message, RaftElectionState, raft_election
from almost_raft.transports import WireError, decode_frame, encode_message

NodeId = str | int


class UdpNode:
    """A peer at ``host:port``, reached through this node's one UDP socket."""

    def __init__(self, node_id: NodeId, sock: UDPSocket, lock: anyio.Lock, host: str, port: int) -> None:
        self._node_id = node_id
        self._sock = sock
        self._lock = lock  # shared by every UdpNode on this socket
        self._address = (host, port)

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    async def send_message(self, message: Message) -> None:
        # The election calls send_message for different peers at the same time,
        # and they all share one socket: one send at a time.
        async with self._lock:
            await self._sock.sendto(encode_message(message), *self._address)


async def receive(sock: UDPSocket, control: MemoryObjectSendStream[ControlMessage | Message]) -> None:
    """Feed every valid datagram into ``control``; drop the rest."""
    async for datagram, _ in sock:
        try:
            message = decode_frame(datagram)
        except WireError:
            continue  # not one of our frames
        try:
            control.send_nowait(message)  # never block the receiver on a busy election
        except anyio.WouldBlock:
            pass  # control is full: drop it, the election tolerates lost messages
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return  # the election has ended


SIZE = 3


async def watch(state: RaftElectionState, views: dict[NodeId, LeaderChanged], agreed: anyio.Event) -> None:
    """Record *state*'s view of the leader; set *agreed* once every node names the same leader."""
    with state.subscribe() as events:
        async for change in events:
            views[state.self_id] = change
            if change.leader_id is not None and len(views) == SIZE and len(set(views.values())) == 1:
                agreed.set()


async def main() -> None:
    """Three nodes in one process, each on its own UDP socket, until they agree on a leader."""
    ids: list[NodeId] = [f"n{i}" for i in range(1, SIZE + 1)]
    socks = {i: await anyio.create_udp_socket(local_host="127.0.0.1", local_port=0) for i in ids}
    ports = {i: sock.extra(SocketAttribute.local_port) for i, sock in socks.items()}
    views: dict[NodeId, LeaderChanged] = {}
    agreed = anyio.Event()
    controls = []
    async with anyio.create_task_group() as tg:
        for me in ids:
            state, control = RaftElectionState.init(me, min_nodes=SIZE)
            controls.append(control)
            tg.start_soon(receive, socks[me], control)
            await tg.start(raft_election, state)
            tg.start_soon(watch, state, views, agreed)
            lock = anyio.Lock()  # one per socket
            for peer in ids:
                if peer != me:
                    await control.send(AddNode(UdpNode(peer, socks[me], lock, "127.0.0.1", ports[peer])))
        with anyio.fail_after(10):
            await agreed.wait()
        leader = views[ids[0]]
        print(f"over UDP, all {SIZE} nodes agree: {leader.leader_id} leads term {leader.term}")
        tg.cancel_scope.cancel()
    for control in controls:
        control.close()
    for sock in socks.values():
        await sock.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    anyio.run(main, backend=parser.parse_args().backend)
