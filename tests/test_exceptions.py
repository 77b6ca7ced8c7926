"""Exceptions as themselves: the context managers that own a task group do not wrap a single exception.

``async with TcpTransport(...)`` and ``async with leading(state)`` each run
tasks of their own; anyio wraps whatever leaves a task group in an exception
group.  An exception raised in their body must come out as itself, so that
``except KeyError:`` around them works as it reads.
"""

from __future__ import annotations

import sys

import anyio
import pytest

from almost_raft import AddNode, ControlMessage, Message, RaftElectionState, raft_election
from almost_raft.leadership import leading
from almost_raft.transports import MemoryNetwork, TcpTransport

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends on their real clocks: the transport's sockets are real."""
    return str(request.param)


class Marker(Exception):
    """Raised by the tests' bodies."""


async def test_an_exception_in_the_body_of_tcp_transport_comes_out_as_itself() -> None:
    raised = Marker("from the body")

    async def body() -> None:
        async with TcpTransport("a") as transport:
            transport.node("b", "127.0.0.1", 9)  # a peer, so the transport has something to close
            raise raised

    with pytest.raises(Marker) as info:
        await body()
    assert info.value is raised
    assert not isinstance(info.value.__context__, BaseExceptionGroup)


async def test_tcp_transport_with_a_listener_lets_the_body_exception_out_as_itself(free_tcp_port: int) -> None:
    """With the listener's tasks running, too."""
    send, receive = anyio.create_memory_object_stream[ControlMessage | Message](10)

    async def body() -> None:
        async with TcpTransport("a") as transport:
            await transport.listen("127.0.0.1", free_tcp_port, send)
            await anyio.sleep(0.01)
            raise KeyError("missing")

    with send, receive, pytest.raises(KeyError, match="missing"):
        await body()


async def test_cancelling_around_tcp_transport_still_works() -> None:
    """Unwrapping keeps cancellation intact: an outer scope cancelled in the body ends normally."""
    with anyio.move_on_after(0.05) as scope:
        async with TcpTransport("a"):
            await anyio.sleep_forever()
    assert scope.cancelled_caught


async def test_an_exception_in_the_body_of_leading_comes_out_as_itself() -> None:
    network = MemoryNetwork()
    state, control = RaftElectionState.init("a", election_timeout=0.05, heartbeat_interval=0.01, message_timeout=0.01)
    network.register("a", control)
    raised = Marker("from the leader's body")

    async def body() -> None:
        async with leading(state) as lease:
            assert lease.valid()
            raise raised

    with anyio.fail_after(10), control:
        async with anyio.create_task_group() as tg:
            await tg.start(raft_election, state)
            with pytest.raises(Marker) as info:
                await body()
            tg.cancel_scope.cancel()
    assert info.value is raised
    assert not isinstance(info.value.__context__, BaseExceptionGroup)


async def test_leading_still_ends_normally_when_the_lease_is_lost() -> None:
    """The body cancelled at the loss of the lease: ``async with leading`` ends without an exception."""
    network = MemoryNetwork()
    state, control = RaftElectionState.init("a", election_timeout=0.05, heartbeat_interval=0.01, message_timeout=0.01)
    network.register("a", control)
    with anyio.fail_after(10), control:
        async with anyio.create_task_group() as tg:
            await tg.start(raft_election, state)
            async with leading(state) as lease:
                # A new peer that never answers: the single node keeps leading but
                # its lease, needing 2 of 2 acknowledgements now, runs out.
                await control.send(AddNode(network.node("b", sender_id="a")))
                await anyio.sleep_forever()
            assert not lease.valid()
            tg.cancel_scope.cancel()
