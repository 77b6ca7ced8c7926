"""Run one node over TCP with leader-only work, in one call: ``run_node``.

``run_node(work, node_id=..., listen=..., peers=...)`` wires what a
leader-only job needs: the TCP transport, the election, optional file
storage, ``run_while_leader(state, work)``, the signals (SIGTERM and SIGINT
stop the node, SIGUSR1 hands leadership over) and the graceful handover on
the way out.  It returns when the node has stopped::

    async def job(lease: Lease) -> None:
        ...  # runs only while this node holds the lease; cancelled as soon as it is lost

    await run_node(job, node_id="a", listen="127.0.0.1:7001", peers={"b": "127.0.0.1:7002"})

Stopping, in this order, whatever asked for it (a signal, ``RunningNode.stop()``
or the cancellation of ``run_node``): no new work starts; the running work is
cancelled and waited for, while this node still holds and renews its lease;
then a leader hands leadership over (``TimeoutNow``) and the node leaves.  So
the work has ended before another node can be elected.  A handover
(SIGUSR1, ``RunningNode.hand_over()``) does the same and stays on as a
follower.

``await tg.start(run_node, ...)`` returns a ``RunningNode`` once the node takes
part in the election: its ``state``, the bound ``port``, ``stop()`` and
``hand_over()``.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import anyio
from anyio.abc import TaskStatus

from ._driver import raft_election
from ._messages import LeaderChanged, NodeId, Role
from ._protocols import Storage
from ._state import RaftElectionState
from ._storage import FileStorage
from .leadership import Lease, run_while_leader
from .transports.tcp import TcpStats, TcpTransport

if TYPE_CHECKING:
    from ._exec import ExecRunner
    from .status import StatusApp

__all__ = ("NodeStartError", "RunningNode", "run_node")

logger = logging.getLogger("almost_raft")

Work = Callable[[Lease], Awaitable[object]]


class NodeStartError(Exception):
    """The node could not start: an address in use, an unreadable storage file, a missing extra."""


def parse_address(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[IPv6]:PORT``); ``ValueError`` naming what is wrong."""
    from ._cli import parse_address as parse

    return parse(text)


def parse_peers(peers: Mapping[str, str] | Iterable[str]) -> tuple[tuple[str, str, int], ...]:
    """``{"b": "HOST:PORT"}`` or ``["b=HOST:PORT"]`` as ``((id, host, port), ...)``."""
    items: list[tuple[str, str]] = []
    if isinstance(peers, Mapping):
        items = [(str(k), str(v)) for k, v in peers.items()]
    else:
        for text in peers:
            peer_id, sep, address = str(text).partition("=")
            if not sep or not peer_id:
                raise ValueError(f"peer {text!r} is not ID=HOST:PORT")
            items.append((peer_id, address))
    out: list[tuple[str, str, int]] = []
    for peer_id, address in items:
        host, port = parse_address(address)
        if port == 0:
            raise ValueError(f"peer {peer_id!r}: a peer's port cannot be 0")
        out.append((peer_id, host, port))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything ``run_node`` and ``python -m almost_raft`` need to run a node (checked by the callers)."""

    node_id: str
    listen: tuple[str, int]
    peers: tuple[tuple[str, str, int], ...]
    election_timeout: float = 0.15
    election_timeout_max: float | None = None
    heartbeat_interval: float = 0.05
    message_timeout: float = 0.05
    min_nodes: int = 1
    max_nodes: int = 1024
    storage: Storage | None = None
    server_ssl_context: ssl.SSLContext | None = None
    client_ssl_context: ssl.SSLContext | None = None
    seed: int | None = None
    status_listen: tuple[str, int] | None = None
    urls: Mapping[NodeId, str] = field(default_factory=dict)
    health_leader_age: float | None = None
    handle_signals: bool = True
    resign_on_error: bool = False


@final
class RunningNode:
    """A node run by ``run_node``, as ``await tg.start(run_node, ...)`` returns it.

    Attributes:
        state: the node's ``RaftElectionState``.
        port: the port its listener is bound to.
        status_port: the port of its status endpoints, or ``None``.
    """

    def __init__(self, runner: _NodeRun, state: RaftElectionState, port: int, status_port: int | None) -> None:
        self._runner = runner
        self.state = state
        self.port = port
        self.status_port = status_port

    @property
    def node_id(self) -> NodeId:
        """This node's id."""
        return self.state.self_id

    def stop(self) -> None:
        """Stop the node as SIGTERM does: the work ends first, then a leader hands over; does not wait."""
        self._runner.request_stop()

    def hand_over(self) -> None:
        """As SIGUSR1 does: if leading, end the work, then hand leadership over and stay on as a follower."""
        self._runner.request_handover()


class _NodeRun:
    """The lifetime of one node: election, leader-only work, signals and stopping in order."""

    def __init__(
        self,
        cfg: NodeConfig,
        work: Work | None,
        *,
        exec_runner: ExecRunner | None = None,
        on_change: Callable[[LeaderChanged], None] | None = None,
        on_stopped: Callable[[RaftElectionState, TcpStats], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.work = work
        self.exec_runner = exec_runner
        self.on_change = on_change
        self.on_stopped = on_stopped
        self.stopping = False
        self.exit_code = 0
        self.handover_wanted = False
        self.leader_scope: anyio.CancelScope | None = None
        self.main_scope: anyio.CancelScope | None = None
        self.state: RaftElectionState | None = None

    # -------------------------------------------------------------- requests

    def request_stop(self, exit_code: int = 0) -> None:
        """Stop: no new work, the running work cancelled and waited for, then leave (a leader handing over)."""
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = exit_code
        if self.exec_runner is not None:
            self.exec_runner.begin_shutdown()
        if self.leader_scope is not None:
            self.leader_scope.cancel()

    def request_handover(self) -> None:
        """If leading: the running work cancelled and waited for, then hand leadership over."""
        state = self.state
        if self.stopping or state is None or state.role is not Role.LEADER:
            return
        self.handover_wanted = True
        if self.leader_scope is not None:
            self.leader_scope.cancel()

    # ------------------------------------------------------------------ run

    async def run(self, *, task_status: TaskStatus[RunningNode]) -> None:
        cfg = self.cfg
        host, port = cfg.listen
        if cfg.storage is not None:
            try:
                await cfg.storage.load()  # a corrupt file stops the start with a clear error
            except (OSError, ValueError) as exc:
                raise NodeStartError(f"cannot load the storage: {exc}") from exc
        status_sock, status_app = self._status_server()
        transport = TcpTransport(
            cfg.node_id,
            server_ssl_context=cfg.server_ssl_context,
            client_ssl_context=cfg.client_ssl_context,
            flush_timeout=max(cfg.message_timeout, 0.1),
        )
        try:
            async with transport:
                nodes = [transport.node(peer_id, peer_host, peer_port) for peer_id, peer_host, peer_port in cfg.peers]
                state, control = RaftElectionState.init(
                    cfg.node_id,
                    election_timeout=cfg.election_timeout,
                    election_timeout_max=cfg.election_timeout_max,
                    heartbeat_interval=cfg.heartbeat_interval,
                    message_timeout=cfg.message_timeout,
                    nodes=nodes,
                    min_nodes=cfg.min_nodes,
                    max_nodes=cfg.max_nodes,
                    storage=cfg.storage,
                    rng=random.Random(cfg.seed),
                )
                self.state = state
                if self.exec_runner is not None:
                    self.exec_runner.attach(state)
                async with control:
                    try:
                        bound = await transport.listen(host, port, control)
                    except OSError as exc:
                        raise NodeStartError(f"cannot listen on {host}:{port}: {exc}") from exc
                    handle = RunningNode(
                        self, state, bound, None if status_sock is None else status_sock.getsockname()[1]
                    )
                    async with anyio.create_task_group() as tg:
                        election_done = anyio.Event()
                        await tg.start(self._election, state, election_done)
                        try:
                            async with anyio.create_task_group() as aux:
                                printed = anyio.Event()
                                if self.on_change is not None:
                                    aux.start_soon(self._print_changes, state, printed)
                                else:
                                    printed.set()
                                if status_sock is not None and status_app is not None:
                                    from .status import serve_asgi

                                    app = status_app(state, transport)
                                    aux.start_soon(app.watch)
                                    await aux.start(serve_asgi, app, status_sock)
                                    status_sock = None  # the server owns it now
                                task_status.started(handle)
                                try:
                                    await self._main(state)
                                finally:
                                    # The work has ended (its clean-up is shielded): now leave,
                                    # a leader handing over.  Closing control ends the election.
                                    control.close()
                                    with anyio.CancelScope(shield=True), anyio.move_on_after(cfg.election_timeout * 4):
                                        await election_done.wait()
                                        await printed.wait()  # the last views are printed
                                    aux.cancel_scope.cancel()
                        finally:
                            tg.cancel_scope.cancel()
        finally:
            if status_sock is not None:
                status_sock.close()
            # Also when the election failed (say, a save failed): the caller reports why.
            if self.on_stopped is not None and self.state is not None:
                self.on_stopped(self.state, transport.stats())

    def _status_server(
        self,
    ) -> tuple[socket.socket | None, Callable[[RaftElectionState, TcpTransport], StatusApp] | None]:
        """Bind the status listener now, so that a bad address fails the start."""
        cfg = self.cfg
        if cfg.status_listen is None:
            return None, None
        try:
            from . import status
        except ImportError as exc:
            raise NodeStartError(
                f"the status endpoints need the server extra: pip install 'almost_raft[server]' ({exc})"
            ) from exc
        host, port = cfg.status_listen
        try:
            sock = status.bind_socket(host, port)
        except OSError as exc:
            raise NodeStartError(f"cannot listen on {host}:{port} for the status endpoints: {exc}") from exc
        addresses: dict[NodeId, str] = {
            peer_id: f"{peer_host}:{peer_port}" for peer_id, peer_host, peer_port in cfg.peers
        }
        addresses[cfg.node_id] = f"{cfg.listen[0]}:{cfg.listen[1]}"
        runner = self.exec_runner

        def make(state: RaftElectionState, transport: TcpTransport) -> StatusApp:
            def extra() -> dict[str, object]:
                out: dict[str, object] = {"transport": transport.stats().as_dict()}
                if runner is not None:
                    out["child"] = runner.stats()
                return out

            return status.StatusApp(
                state, urls=cfg.urls, addresses=addresses, health_leader_age=cfg.health_leader_age, extra=extra
            )

        return sock, make

    async def _election(
        self, state: RaftElectionState, done: anyio.Event, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        # Shielded: whoever cancels run_node, the election goes on until the
        # work has ended and control is closed, so a leader never hands over
        # (giving its lease up) while its work still runs.
        try:
            with anyio.CancelScope(shield=True):
                await raft_election(state, task_status=task_status)
        finally:
            done.set()

    async def _print_changes(self, state: RaftElectionState, done: anyio.Event) -> None:
        assert self.on_change is not None
        try:
            with state.subscribe(buffer=256) as events:
                async for event in events:
                    self.on_change(event)
        finally:
            done.set()

    async def _main(self, state: RaftElectionState) -> None:
        async with anyio.create_task_group() as tg:
            if self.cfg.handle_signals:
                await tg.start(self._watch_signals)
            if self.exec_runner is not None:
                tg.start_soon(self._watch_exec_failure, self.exec_runner)
            try:
                while not self.stopping and state.role is not Role.TERMINATED:
                    if self.handover_wanted:
                        # The work has ended (the leader scope was cancelled and waited for).
                        self.handover_wanted = False
                        await self._hand_over(state)
                        continue
                    with anyio.CancelScope() as self.leader_scope:
                        if self.work is not None:
                            await run_while_leader(state, self.work, resign_on_error=self.cfg.resign_on_error)
                        else:
                            await state.wait_changed()
                    self.leader_scope = None
            finally:
                self.leader_scope = None
                tg.cancel_scope.cancel()

    async def _hand_over(self, state: RaftElectionState) -> None:
        """The work has ended: hand over, and start no work until the lease is given up (or 2T passed)."""
        if state.role is not Role.LEADER:
            return
        term = state.term
        logger.info("node %r term %d: handing leadership over", state.self_id, term)
        state.transfer_leadership()
        with anyio.move_on_after(2 * self.cfg.election_timeout):
            while state.term == term and state.holds_lease:
                await state.wait_changed()

    async def _watch_exec_failure(self, runner: ExecRunner) -> None:
        await runner.failed.wait()
        self.request_stop(exit_code=1)

    async def _watch_signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGUSR1:
                    logger.info("node %r: SIGUSR1, handing leadership over", self.cfg.node_id)
                    self.request_handover()
                elif not self.stopping:
                    logger.info("node %r: %s, stopping (work first, then a leader hands over)", self.cfg.node_id, name)
                    self.request_stop()
                else:
                    logger.warning("node %r: second %s, stopping at once", self.cfg.node_id, name)
                    if self.exec_runner is not None:
                        self.exec_runner.kill_now()
                    elif self.main_scope is not None:
                        self.main_scope.cancel()


def find_start_error(exc: BaseException) -> NodeStartError | None:
    """The ``NodeStartError`` in *exc*, possibly wrapped in exception groups."""
    if isinstance(exc, NodeStartError):
        return exc
    for sub in getattr(exc, "exceptions", ()):
        found = find_start_error(sub)
        if found is not None:
            return found
    return None


async def run_node(
    work: Work | None,
    *,
    node_id: str,
    listen: str,
    peers: Mapping[str, str] | Iterable[str],
    storage: str | os.PathLike[str] | Storage | None = None,
    election_timeout: float = 0.15,
    election_timeout_max: float | None = None,
    heartbeat_interval: float | None = None,
    message_timeout: float | None = None,
    min_nodes: int | None = None,
    ssl_contexts: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
    status_listen: str | None = None,
    urls: Mapping[NodeId, str] | None = None,
    health_leader_age: float | None = None,
    handle_signals: bool = True,
    resign_on_error: bool = False,
    seed: int | None = None,
    task_status: TaskStatus[RunningNode] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run one node over TCP and ``await work(lease)`` whenever it holds the lease.

    Returns once the node has stopped: on SIGTERM or SIGINT (with
    ``handle_signals``), ``RunningNode.stop()``, or when the caller cancels
    it.  In each case the work is cancelled and waited for first, while the
    lease still holds, and a leader then hands leadership over.

    Args:
        work: an async callable taking the ``Lease`` (see
            ``run_while_leader``), or ``None`` to only take part.
        node_id: this node's id.
        listen: ``"HOST:PORT"`` to listen on (port 0: any free port, see
            ``RunningNode.port``).
        peers: the other nodes: ``{"b": "HOST:PORT", ...}`` or
            ``["b=HOST:PORT", ...]``.
        storage: a path for ``FileStorage`` (term and vote kept across
            restarts), a ``Storage``, or ``None`` (memory).
        election_timeout: ``T`` in seconds.
        election_timeout_max: upper end of the timeout draw (default ``2T``).
        heartbeat_interval: default ``T / 3``.
        message_timeout: bound on each send (default: the heartbeat interval).
        min_nodes: no election below this size (default: all nodes given).
        ssl_contexts: ``(server, client)`` from ``make_tls_contexts`` for mutual TLS.
        status_listen: ``"HOST:PORT"`` for ``/healthz``, ``/readyz``,
            ``/leader``, ``/status`` and ``/metrics`` (needs the ``server`` extra).
        urls: each node's advertised URL (this one's too), reported by ``/leader``.
        health_leader_age: ``/healthz`` fails when no leader was heard for
            this long (default ``10 T``).
        handle_signals: SIGTERM/SIGINT stop the node, SIGUSR1 hands over
            (main thread only).
        resign_on_error: passed to ``run_while_leader``.
        seed: seeds the election-timer randomness.
        task_status: ``await tg.start(run_node, ...)`` returns a ``RunningNode``.

    Raises:
        NodeStartError: the node could not start (address in use, unreadable
            storage, the ``server`` extra missing).
        ValueError: a bad address or timing.
    """
    heartbeat = heartbeat_interval if heartbeat_interval is not None else election_timeout / 3
    peer_list = parse_peers(peers)
    if isinstance(storage, (str, os.PathLike)):
        storage = FileStorage(os.fspath(storage))
    cfg = NodeConfig(
        node_id=node_id,
        listen=parse_address(listen),
        peers=peer_list,
        election_timeout=election_timeout,
        election_timeout_max=election_timeout_max,
        heartbeat_interval=heartbeat,
        message_timeout=message_timeout if message_timeout is not None else heartbeat,
        min_nodes=min_nodes if min_nodes is not None else len(peer_list) + 1,
        max_nodes=max(1024, len(peer_list) + 1),
        storage=storage,
        server_ssl_context=None if ssl_contexts is None else ssl_contexts[0],
        client_ssl_context=None if ssl_contexts is None else ssl_contexts[1],
        seed=seed,
        status_listen=None if status_listen is None else parse_address(status_listen),
        urls=dict(urls or {}),
        health_leader_age=health_leader_age,
        handle_signals=handle_signals,
        resign_on_error=resign_on_error,
    )
    await serve_node(cfg, work, task_status=task_status)


async def serve_node(
    cfg: NodeConfig,
    work: Work | None,
    *,
    exec_runner: ExecRunner | None = None,
    on_change: Callable[[LeaderChanged], None] | None = None,
    on_stopped: Callable[[RaftElectionState, TcpStats], None] | None = None,
    task_status: TaskStatus[RunningNode] = anyio.TASK_STATUS_IGNORED,
) -> int:
    """Run the node *cfg* describes (``run_node`` and the command line share it); return the exit status.

    Raises:
        NodeStartError: the node could not start.
    """
    node_run = _NodeRun(cfg, work, exec_runner=exec_runner, on_change=on_change, on_stopped=on_stopped)
    try:
        with anyio.CancelScope() as node_run.main_scope:
            await node_run.run(task_status=task_status)
        return node_run.exit_code
    except BaseException as exc:
        found = find_start_error(exc)
        if found is not None and found is not exc:
            raise found from None
        raise
