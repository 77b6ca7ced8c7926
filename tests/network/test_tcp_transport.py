"""The TCP transport in one process, over real sockets, on both backends."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Callable

import anyio
import pytest
from anyio.abc import SocketStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from almost_raft import (
    ControlMessage,
    Heartbeat,
    HeartbeatResponse,
    Message,
    RaftElectionState,
    Role,
    TimeoutNow,
    raft_election,
)
from almost_raft.transports import PeerDisconnected, TcpTransport, make_tls_contexts
from almost_raft.transports._wire import FrameReader

from ._procs import free_ports
from .conftest import Certs

Control = tuple[MemoryObjectSendStream[ControlMessage | Message], MemoryObjectReceiveStream[ControlMessage | Message]]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) for a condition that no event announces (a socket state), checking every millisecond."""
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - no Event exists for a kernel-side socket state
            await anyio.sleep(0.001)


class Sink:
    """A bare listener that records the messages it receives, to stand in for a peer."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.streams: list[SocketStream] = []
        self.changed = anyio.Event()
        self.scope = anyio.CancelScope()
        self.closed = anyio.Event()

    async def serve(self, port: int, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port) as listener:
                    task_status.started()
                    await listener.serve(self._handle)
        finally:
            self.closed.set()

    async def _handle(self, stream: SocketStream) -> None:
        self.streams.append(stream)
        reader = FrameReader()
        async with stream:
            try:
                async for data in stream:
                    reader.feed(data)
                    while (item := reader.next()) is not None:
                        assert not isinstance(item, Exception)
                        self.received.append(item)
                        self.changed.set()
                        self.changed = anyio.Event()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async def wait_for(self, count: int) -> list[Message]:
        with anyio.fail_after(5):
            while len(self.received) < count:
                await self.changed.wait()
        return self.received

    async def crash(self) -> None:
        """Close the listener and every connection, as a killed process would."""
        self.scope.cancel()
        for stream in self.streams:
            await anyio.aclose_forcefully(stream)
        await self.closed.wait()


async def test_three_nodes_elect_one_leader_over_tcp() -> None:
    ids = ["a", "b", "c"]
    ports = dict(zip(ids, free_ports(3), strict=True))
    async with contextlib.AsyncExitStack() as stack:
        transports = {i: await stack.enter_async_context(TcpTransport(i)) for i in ids}
        states: dict[str, RaftElectionState] = {}
        tg = await stack.enter_async_context(anyio.create_task_group())
        for node_id, transport in transports.items():
            nodes = [transport.node(p, "127.0.0.1", ports[p]) for p in ids if p != node_id]
            state, control = RaftElectionState.init(
                node_id, election_timeout=0.15, heartbeat_interval=0.05, nodes=nodes, min_nodes=3
            )
            stack.enter_context(control)
            await transport.listen("127.0.0.1", ports[node_id], control)
            states[node_id] = state
            tg.start_soon(raft_election, state)
        subs = {i: s.subscribe() for i, s in states.items()}
        views: dict[str, tuple[int, object]] = {}
        with anyio.fail_after(10):
            while len(views) < 3 or len(set(views.values())) != 1 or None in {v[1] for v in views.values()}:
                for node_id, sub in subs.items():
                    while True:
                        try:
                            event = sub.receive_nowait()
                        except anyio.WouldBlock:
                            break
                        views[node_id] = (event.term, event.leader_id)
                await anyio.sleep(0.001)
        leaders = [s for s in states.values() if s.role is Role.LEADER]
        assert len(leaders) == 1
        assert views["a"][1] == leaders[0].self_id
        stats = transports["a"].stats()
        assert stats.frames_received > 0
        assert stats.frames_rejected == 0
        tg.cancel_scope.cancel()


async def test_a_peer_that_restarted_gets_the_next_message() -> None:
    """The stale connection to a crashed peer is noticed at once, so no message is written into it and lost."""
    (port,) = free_ports(1)
    async with TcpTransport("a") as transport, anyio.create_task_group() as tg:
        node = transport.node("b", "127.0.0.1", port)
        first = Sink()
        await tg.start(first.serve, port)
        await node.send_message(Heartbeat(1, "a", 1))
        assert await first.wait_for(1) == [Heartbeat(1, "a", 1)]
        await first.crash()
        await wait_until(lambda: not node.connected)

        second = Sink()
        await tg.start(second.serve, port)
        await node.send_message(Heartbeat(1, "a", 2))
        assert await second.wait_for(1) == [Heartbeat(1, "a", 2)]
        assert transport.stats().messages_dropped == 0
        tg.cancel_scope.cancel()


async def test_unreachable_peer_backs_off_logs_once_and_keeps_the_newest(caplog: pytest.LogCaptureFixture) -> None:
    (port,) = free_ports(1)
    caplog.set_level(logging.DEBUG, logger="almost_raft")
    async with (
        TcpTransport("a", queue_size=4, backoff_initial=0.01, backoff_max=0.04) as transport,
        anyio.create_task_group() as tg,
    ):
        node = transport.node("b", "127.0.0.1", port)
        # Answers: they expect nothing back, so the sink (which never answers) counts as back once connected.
        for seq in range(1, 11):
            await node.send_message(HeartbeatResponse(1, "a", True, seq))
        await wait_until(lambda: transport.stats().connect_failures >= 4)
        stats = transport.stats()
        assert stats.messages_queued == 10
        assert stats.messages_dropped == 6
        assert node.queued == 4

        sink = Sink()
        await tg.start(sink.serve, port)
        # The four newest, in order; the oldest were dropped.
        assert await sink.wait_for(4) == [HeartbeatResponse(1, "a", True, s) for s in range(7, 11)]
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len([w for w in warnings if "unreachable" in w]) == 1, warnings
        assert len([w for w in warnings if "reachable again" in w]) == 1, warnings
        tg.cancel_scope.cancel()


async def test_queued_messages_are_flushed_on_exit() -> None:
    (port,) = free_ports(1)
    sink = Sink()
    async with anyio.create_task_group() as tg:
        await tg.start(sink.serve, port)
        async with TcpTransport("a") as transport:
            node = transport.node("b", "127.0.0.1", port)
            await node.send_message(TimeoutNow(3, "a"))
        assert await sink.wait_for(1) == [TimeoutNow(3, "a")]
        tg.cancel_scope.cancel()


async def test_a_frame_to_an_open_connection_is_on_the_wire_when_send_message_nowait_returns() -> None:
    """No task switch between the election's step and the socket: a stopping leader's TimeoutNow is out at once."""
    (port,) = free_ports(1)
    with socket.create_server(("127.0.0.1", port)) as server:
        async with TcpTransport("a") as transport:
            node = transport.node("b", "127.0.0.1", port)
            node.send_message_nowait(Heartbeat(1, "a", 1))  # connects first: queued for the writer
            await wait_until(lambda: node.connected)
            peer, _ = server.accept()
            with peer:
                peer.settimeout(5)
                reader = FrameReader()
                while (first := reader.next()) is None:
                    reader.feed(peer.recv(4096))
                assert first == Heartbeat(1, "a", 1)
                # From here on nothing awaits: the writer task cannot run, only this call writes.
                node.send_message_nowait(TimeoutNow(1, "a"))
                reader.feed(peer.recv(4096))
                assert reader.next() == TimeoutNow(1, "a")
                assert node.queued == 0


async def test_queued_frames_are_flushed_when_the_transport_is_cancelled() -> None:
    """A node stopped by cancellation still gets its hand-over out, even to a peer it must connect to first."""
    (port,) = free_ports(1)
    sink = Sink()
    async with anyio.create_task_group() as tg:
        await tg.start(sink.serve, port)
        with anyio.CancelScope() as scope:
            async with TcpTransport("a") as transport:
                node = transport.node("b", "127.0.0.1", port)
                node.send_message_nowait(TimeoutNow(3, "a"))  # not connected yet: queued
                scope.cancel()
                await anyio.sleep_forever()
        assert await sink.wait_for(1) == [TimeoutNow(3, "a")]
        tg.cancel_scope.cancel()


async def test_tls_sender_must_match_the_certificate(certs: Certs) -> None:
    (port,) = free_ports(1)
    server_ctx, _ = make_tls_contexts(str(certs.cert("a")), str(certs.key("a")), str(certs.ca))
    _, client_ctx = make_tls_contexts(str(certs.cert("x")), str(certs.key("x")), str(certs.ca))
    send, receive = anyio.create_memory_object_stream[ControlMessage | Message](16)
    async with (
        send,
        receive,
        TcpTransport("a", server_ssl_context=server_ctx) as server,
        TcpTransport("x", client_ssl_context=client_ctx) as client,
    ):
        await server.listen("127.0.0.1", port, send)
        to_a = client.node("a", "127.0.0.1", port)
        await to_a.send_message(Heartbeat(5, "b", 1))  # x pretends to be b: dropped
        await to_a.send_message(Heartbeat(5, "x", 2))  # x speaks for itself: delivered
        with anyio.fail_after(5):
            assert await receive.receive() == Heartbeat(5, "x", 2)
        assert server.stats().identity_mismatches == 1
        assert server.stats().frames_received == 1


async def test_tls_client_refuses_a_listener_with_the_wrong_name(certs: Certs) -> None:
    (port,) = free_ports(1)
    server_ctx, _ = make_tls_contexts(str(certs.cert("c")), str(certs.key("c")), str(certs.ca))
    _, client_ctx = make_tls_contexts(str(certs.cert("a")), str(certs.key("a")), str(certs.ca))
    send, receive = anyio.create_memory_object_stream[ControlMessage | Message](16)
    async with (
        send,
        receive,
        TcpTransport("c", server_ssl_context=server_ctx) as server,
        TcpTransport("a", client_ssl_context=client_ctx) as client,
    ):
        await server.listen("127.0.0.1", port, send)
        to_b = client.node("b", "127.0.0.1", port)  # the listener there is c, not b
        await to_b.send_message(Heartbeat(1, "a", 1))
        await wait_until(lambda: client.stats().connect_failures >= 1)
        assert client.stats().connects == 0
        assert server.stats().frames_received == 0


def test_make_tls_contexts_requires_client_certificates(certs: Certs) -> None:
    server_ctx, client_ctx = make_tls_contexts(str(certs.cert("a")), str(certs.key("a")), str(certs.ca))
    assert server_ctx.verify_mode is ssl.CERT_REQUIRED
    assert client_ctx.verify_mode is ssl.CERT_REQUIRED
    assert client_ctx.check_hostname


def test_transport_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        TcpTransport("a", queue_size=0)
    with pytest.raises(ValueError, match="backoff_max"):
        TcpTransport("a", backoff_initial=2.0, backoff_max=1.0)
    with pytest.raises(TypeError):
        TcpTransport(True)


async def test_a_peer_closing_its_side_is_reported_once_as_peer_disconnected() -> None:
    """FIN from the peer's side: one ``PeerDisconnected`` in ``control``; a connection given up by this side: none."""
    (port, own) = free_ports(2)
    send, receive = anyio.create_memory_object_stream[ControlMessage | Message](16)
    with socket.create_server(("127.0.0.1", port)) as server, send, receive:
        async with TcpTransport("a") as transport:
            await transport.listen("127.0.0.1", own, send)
            node = transport.node("b", "127.0.0.1", port)
            node.send_message_nowait(HeartbeatResponse(1, "a", True, 1))
            await wait_until(lambda: node.connected)
            peer, _ = server.accept()
            peer.close()  # the peer's process exits: its kernel sends FIN
            with anyio.fail_after(5):
                notice = await receive.receive()
            assert notice == PeerDisconnected("b")
            assert not node.connected
            assert transport.stats().disconnect_notices == 1

            # Reconnect, then the transport closes: its own closing is no notice.
            node.send_message_nowait(HeartbeatResponse(1, "a", True, 2))
            await wait_until(lambda: node.connected)
            second, _ = server.accept()
        with second:
            pass
        assert transport.stats().disconnect_notices == 1
        with pytest.raises(anyio.WouldBlock):
            receive.receive_nowait()


@pytest.mark.parametrize(("ending", "notice"), [("reset", True), ("garbage", False)])
async def test_only_an_end_from_the_peers_side_is_a_notice(ending: str, notice: bool) -> None:
    """A reset from the peer's kernel is a notice; a peer that sends on a write-only connection is not."""
    (port, own) = free_ports(2)
    send, receive = anyio.create_memory_object_stream[ControlMessage | Message](16)
    with socket.create_server(("127.0.0.1", port)) as server, send, receive:
        async with TcpTransport("a") as transport:
            await transport.listen("127.0.0.1", own, send)
            node = transport.node("b", "127.0.0.1", port)
            node.send_message_nowait(HeartbeatResponse(1, "a", True, 1))
            await wait_until(lambda: node.connected)
            peer, _ = server.accept()
            with peer:
                if ending == "reset":
                    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    peer.sendall(b"nothing is ever sent back on this connection")
            await wait_until(lambda: not node.connected)
            assert transport.stats().disconnect_notices == int(notice)
        items = []
        with contextlib.suppress(anyio.WouldBlock):
            while True:
                items.append(receive.receive_nowait())
        assert items == ([PeerDisconnected("b")] if notice else [])
