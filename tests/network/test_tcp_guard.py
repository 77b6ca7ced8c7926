"""The listener's guard and the heal rules of the TCP transport, in one process over real sockets.

Idle, trickling and crowding connections must not hold a listener's slots
(``first_frame_timeout``, ``idle_timeout``, ``max_connections_per_address``,
eviction), and a connection that swallows frames must be replaced
(``silence_timeout``, ``TCP_USER_TIMEOUT``).  Each test runs on both backends.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import anyio
import pytest
from anyio.abc import SocketStream, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from almost_raft import ControlMessage, Heartbeat, HeartbeatResponse, Message, RequestVote, VoteResponse
from almost_raft.transports import TcpTransport, encode_message
from almost_raft.transports._tcp_guard import ConnectionTable, Incoming, address_key

from ._procs import free_ports

Control = tuple[MemoryObjectSendStream[ControlMessage | Message], MemoryObjectReceiveStream[ControlMessage | Message]]

FRAME = encode_message(Heartbeat(1, "b", 1))


async def wait_until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) for a condition that no event announces (a socket state, a counter)."""
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - no Event exists for a kernel-side socket state
            await anyio.sleep(0.005)


async def closed_by_peer(stream: SocketStream, within: float = 5) -> bool:
    """Whether the other side closes *stream* within *within* seconds (reading and discarding until then)."""
    with anyio.move_on_after(within):
        try:
            while True:
                await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return True
    return False


def control() -> Control:
    return anyio.create_memory_object_stream[ControlMessage | Message](256)


# ------------------------------------------------------------------ the table


def test_address_keys() -> None:
    assert address_key("10.0.0.7") == "10.0.0.7"
    assert address_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert address_key("2001:db8:1:2:3:4:5:6") == address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not an address") == "not an address"


def test_table_evicts_the_least_recently_useful_and_never_a_live_peer() -> None:
    table = ConnectionTable(total=3, per_address=2, protect=1.0)
    live = Incoming("a", "live", now=0.0)
    live.useful, live.useful_at = True, 9.5
    idle = Incoming("a", "idle", now=1.0)
    assert table.admit(live, 9.5) == (True, [])
    assert table.admit(idle, 9.6) == (True, [])
    # A third from "a": the idle one goes, the live one (a frame 0.5 s ago) stays.
    third = Incoming("a", "third", now=10.0)
    assert table.admit(third, 10.0) == (True, [idle])
    # "a" is full of a live peer and a fresh newcomer: the oldest newcomer goes first.
    fourth = Incoming("a", "fourth", now=10.1)
    assert table.admit(fourth, 10.1) == (True, [third])
    other = Incoming("b", "other", now=10.2)
    assert table.admit(other, 10.2) == (True, [])
    assert len(table) == 3
    # Full in total: the least recently useful anywhere goes (fourth, not the live one).
    fifth = Incoming("c", "fifth", now=10.3)
    assert table.admit(fifth, 10.3) == (True, [fourth])
    # Only live peers left in "a" and the limit reached: a newcomer is refused.
    live2 = Incoming("a", "live2", now=10.4)
    live2.useful, live2.useful_at = True, 10.4
    table.remove(other)
    assert table.admit(live2, 10.4) == (True, [])
    assert table.admit(Incoming("a", "refused", now=10.45), 10.45) == (False, [])
    assert table.count("a") == 2
    table.remove(live)
    table.remove(live)  # twice is harmless
    assert table.count("a") == 1


# ------------------------------------------------------------ a real listener


async def test_a_connection_that_sends_nothing_or_a_trickle_is_closed() -> None:
    (port,) = free_ports(1)
    send, receive = control()
    async with send, receive, TcpTransport("a", first_frame_timeout=0.2) as transport:
        transport.node("b", "127.0.0.1", free_ports(1)[0])
        await transport.listen("127.0.0.1", port, send)
        silent = await anyio.connect_tcp("127.0.0.1", port)
        trickle = await anyio.connect_tcp("127.0.0.1", port)
        async with silent, trickle, anyio.create_task_group() as tg:

            async def drip() -> None:
                for byte in FRAME:  # one byte at a time: a frame completes only after 1.5 s
                    try:
                        await trickle.send(bytes([byte]))
                    except (anyio.BrokenResourceError, OSError):
                        return
                    await anyio.sleep(0.02)

            tg.start_soon(drip)
            assert await closed_by_peer(silent)
            assert await closed_by_peer(trickle)
        stats = transport.stats()
        assert stats.first_frame_timeouts == 2
        assert stats.frames_received == 0


async def test_frames_from_strangers_do_not_keep_a_connection_open() -> None:
    (port,) = free_ports(1)
    send, receive = control()
    async with send, receive, TcpTransport("a", first_frame_timeout=0.3) as transport:
        transport.node("b", "127.0.0.1", free_ports(1)[0])
        await transport.listen("127.0.0.1", port, send)
        async with await anyio.connect_tcp("127.0.0.1", port) as stranger:
            for seq in range(5):
                await stranger.send(encode_message(Heartbeat(1, "zz", seq)))
            assert await closed_by_peer(stranger)
        assert transport.stats().frames_received == 5  # delivered (the election drops them) ...
        assert transport.stats().first_frame_timeouts == 1  # ... but they did not count


async def test_an_idle_peer_connection_is_closed_and_the_next_message_reopens_it() -> None:
    port_a, port_b = free_ports(2)
    send, receive = control()
    async with (
        send,
        receive,
        TcpTransport("a", idle_timeout=0.3) as a,
        TcpTransport("b") as b,
    ):
        a.node("b", "127.0.0.1", port_b)
        await a.listen("127.0.0.1", port_a, send)
        to_a = b.node("a", "127.0.0.1", port_a)
        await to_a.send_message(VoteResponse(1, "b", True))
        with anyio.fail_after(5):
            assert await receive.receive() == VoteResponse(1, "b", True)
        await wait_until(lambda: a.stats().idle_timeouts == 1)
        await wait_until(lambda: not to_a.connected)  # b's watcher saw the close at once
        await to_a.send_message(VoteResponse(2, "b", True))
        with anyio.fail_after(5):
            assert await receive.receive() == VoteResponse(2, "b", True)
        assert b.stats().messages_dropped == 0
        assert b.stats().connects == 2


async def test_one_address_cannot_take_every_slot() -> None:
    port_a, port_b = free_ports(2)
    send, receive = control()
    async with (
        send,
        receive,
        TcpTransport("a", max_connections=6, max_connections_per_address=2, first_frame_timeout=5) as a,
        TcpTransport("b") as b,
    ):
        a.node("b", "127.0.0.1", port_b)
        await a.listen("127.0.0.1", port_a, send)
        crowd = [await anyio.connect_tcp("127.0.0.1", port_a, local_host="127.0.0.2") for _ in range(5)]
        try:
            # The three oldest were evicted for the newer ones: two remain from 127.0.0.2.
            closed = [await closed_by_peer(stream, within=0.5) for stream in crowd]
            assert closed == [True, True, True, False, False]
            assert a.stats().connections_evicted == 3
            # A peer from another address is not affected.
            to_a = b.node("a", "127.0.0.1", port_a)
            await to_a.send_message(VoteResponse(1, "b", True))
            with anyio.fail_after(5):
                assert await receive.receive() == VoteResponse(1, "b", True)
        finally:
            for stream in crowd:
                await stream.aclose()


async def test_a_live_peer_is_never_evicted_by_a_crowd_from_its_own_address() -> None:
    port_a, port_b = free_ports(2)
    send, receive = control()
    async with (
        send,
        receive,
        TcpTransport("a", max_connections=3, max_connections_per_address=3) as a,
        TcpTransport("b") as b,
        anyio.create_task_group() as tg,
    ):
        a.node("b", "127.0.0.1", port_b)
        await a.listen("127.0.0.1", port_a, send)
        to_a = b.node("a", "127.0.0.1", port_a)
        received: list[ControlMessage | Message] = []

        async def beat() -> None:  # answers, which expect nothing back: b's connection stays
            seq = 0
            while True:
                seq += 1
                await to_a.send_message(HeartbeatResponse(1, "b", True, seq))
                await anyio.sleep(0.01)

        async def collect() -> None:
            async for message in receive:
                received.append(message)

        tg.start_soon(beat)
        tg.start_soon(collect)
        await wait_until(lambda: len(received) >= 3)
        crowd = []
        for _ in range(10):
            crowd.append(await anyio.connect_tcp("127.0.0.1", port_a))
            await anyio.sleep(0.01)
        count = len(received)
        await wait_until(lambda: len(received) >= count + 5)
        stats = a.stats()
        assert stats.connections_evicted + stats.connections_refused >= 8
        assert b.stats().disconnects == 0  # b's own connection was never the one closed
        assert b.stats().connects == 1
        for stream in crowd:
            await stream.aclose()
        tg.cancel_scope.cancel()


# ---------------------------------------------------------------------- heal


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux-only")
async def test_outgoing_connections_give_up_unacknowledged_data_after_2t() -> None:
    (port,) = free_ports(1)
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port) as listener,
        TcpTransport("a", election_timeout=0.2) as transport,
        anyio.create_task_group() as tg,
    ):

        async def handle(stream: SocketStream) -> None:
            async with stream:
                await anyio.sleep_forever()

        tg.start_soon(listener.serve, handle)
        node = transport.node("b", "127.0.0.1", port)
        await node.send_message(Heartbeat(1, "a", 1))
        await wait_until(lambda: node.connected)
        conn = node._conn
        assert conn is not None
        sock = conn.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 400
        assert (transport.user_timeout, transport.silence_timeout) == (0.4, 0.2)
        tg.cancel_scope.cancel()


class BlackHole:
    """A TCP forwarder the test owns: it passes bytes on until cut, then swallows them.

    A connection that was open or opened while the hole is cut swallows
    everything for good, and is never closed: a middlebox that lost its way,
    acknowledging what it receives, so the kernel of the sending side never
    notices.  Connections opened after ``heal`` pass bytes on again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = False
        self.generation = 0
        self.swallowed = 0

    async def serve(self, port: int, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port) as listener:
            task_status.started()
            await listener.serve(self._handle)

    def blackhole(self) -> None:
        self.cut = True
        self.generation += 1

    def heal(self) -> None:
        self.cut = False

    async def _handle(self, client: SocketStream) -> None:
        generation = self.generation if not self.cut else -1
        async with client, await anyio.connect_tcp("127.0.0.1", self.target_port) as upstream:
            async for data in client:
                if self.generation != generation:
                    self.swallowed += len(data)
                    continue
                await upstream.send(data)


async def test_a_connection_that_swallows_frames_is_replaced_when_the_peer_stays_silent() -> None:
    """Without the silence rule the heartbeats would go into the black hole for ever.

    Nothing tells the sending kernel that anything is wrong (the forwarder
    acknowledges every byte), so only "the peer answers no request" can: the
    connection is replaced after 1 s without an answer, then once a second.
    """
    port_a, port_b, port_hole = free_ports(3)
    hole = BlackHole(port_b)
    send_a, receive_a = control()
    send_b, receive_b = control()
    async with (
        send_a,
        receive_a,
        send_b,
        receive_b,
        TcpTransport("a", election_timeout=0.05) as a,
        TcpTransport("b") as b,
        anyio.create_task_group() as tg,
    ):
        await tg.start(hole.serve, port_hole)
        to_b = a.node("b", "127.0.0.1", port_hole)  # a reaches b through the forwarder
        to_a = b.node("a", "127.0.0.1", port_a)
        await a.listen("127.0.0.1", port_a, send_a)
        await b.listen("127.0.0.1", port_b, send_b)
        heard: list[int] = []

        async def leader() -> None:
            seq = 0
            while True:
                seq += 1
                await to_b.send_message(Heartbeat(1, "a", seq))
                await anyio.sleep(0.01)

        async def follower() -> None:
            async for message in receive_b:
                assert isinstance(message, Heartbeat)
                heard.append(message.seq)
                await to_a.send_message(HeartbeatResponse(1, "b", True, message.seq))

        async def drain() -> None:
            async for _ in receive_a:
                pass

        tg.start_soon(leader)
        tg.start_soon(follower)
        tg.start_soon(drain)
        await wait_until(lambda: len(heard) >= 3)
        hole.blackhole()
        await wait_until(lambda: hole.swallowed > 0)
        cut_at = heard[-1]
        await wait_until(lambda: a.stats().silence_reconnects >= 1)  # after 1 s without an answer
        assert heard[-1] == cut_at
        hole.heal()
        await wait_until(lambda: heard[-1] > cut_at)  # the next replacement goes through
        tg.cancel_scope.cancel()


async def test_answers_never_start_the_silence_clock() -> None:
    """A follower that only answers a leader (which never answers back) keeps its connection."""
    port_b = free_ports(1)[0]
    send_b, receive_b = control()
    async with send_b, receive_b, TcpTransport("a", election_timeout=0.02) as a, TcpTransport("b") as b:
        await b.listen("127.0.0.1", port_b, send_b)
        b.node("a", "127.0.0.1", free_ports(1)[0])  # a is a known peer of b's (its frames keep the connection)
        to_b = a.node("b", "127.0.0.1", port_b)
        for seq in range(10):
            await to_b.send_message(VoteResponse(1, "a", True) if seq % 2 else HeartbeatResponse(1, "a", True, seq))
            await anyio.sleep(0.01)
        await to_b.send_message(RequestVote(2, "a", pre_vote=True))  # starts the clock ...
        await anyio.sleep(1.05)
        await to_b.send_message(RequestVote(2, "a", pre_vote=True))  # ... which runs out: a fresh connection
        with anyio.fail_after(5):
            for _ in range(12):
                await receive_b.receive()
        assert a.stats().connects == 2
        assert a.stats().silence_reconnects == 1
        assert a.stats().messages_dropped == 0


async def test_a_silent_peer_is_reported_once_and_its_answer_once(caplog: pytest.LogCaptureFixture) -> None:
    """Silence is logged once it lasts 1 s (shorter ones only at DEBUG), and the return once."""
    port_b = free_ports(1)[0]
    port_a = free_ports(1)[0]
    send_a, receive_a = control()
    send_b, receive_b = control()
    caplog.set_level(logging.WARNING, logger="almost_raft")
    async with (
        send_a,
        receive_a,
        send_b,
        receive_b,
        TcpTransport("a", election_timeout=0.05) as a,
        TcpTransport("b") as b,
    ):
        await a.listen("127.0.0.1", port_a, send_a)
        await b.listen("127.0.0.1", port_b, send_b)
        to_b = a.node("b", "127.0.0.1", port_b)
        to_a = b.node("a", "127.0.0.1", port_a)
        with anyio.fail_after(5):
            while not caplog.records:  # b never answers: reported after 1 s
                await to_b.send_message(Heartbeat(1, "a", 1))
                await anyio.sleep(0.01)
        await to_a.send_message(HeartbeatResponse(1, "b", True, 1))  # b answers at last
        with anyio.fail_after(5):
            while len(caplog.records) < 2:  # noqa: ASYNC110 - a log record has no event to wait for
                await anyio.sleep(0.01)
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2, messages
        assert "does not answer" in messages[0]
        assert "reachable again" in messages[1]


async def test_a_peer_given_by_name_is_resolved_then_reached() -> None:
    port_b = free_ports(1)[0]
    send_b, receive_b = control()
    async with send_b, receive_b, TcpTransport("a") as a, TcpTransport("b") as b:
        await b.listen("127.0.0.1", port_b, send_b)
        to_b = a.node("b", "localhost", port_b)
        await to_b.send_message(VoteResponse(1, "a", True))
        with anyio.fail_after(5):
            assert await receive_b.receive() == VoteResponse(1, "a", True)
