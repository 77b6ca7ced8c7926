"""Health, leader, status and Prometheus endpoints of a node, as a plain ASGI app.

Needs the ``server`` extra (``pip install 'almost_raft[server]'``):
``prometheus_client`` writes the metrics, ``hypercorn`` serves the app on
asyncio or trio.  ``python -m almost_raft --status-listen HOST:PORT`` and
``run_node(..., status_listen=...)`` serve it; to serve it yourself, build a
``StatusApp(state)``, run ``app.watch()`` beside it, and hand it to any ASGI
server (or mount it in your application).

Routes (GET or HEAD):

``/healthz``
    200 while the election runs and this node heard from a leader (or held
    the lease itself) within ``health_leader_age`` (default ``10 T``; a node
    that just started gets that long to meet its leader); 503 otherwise, as
    for a node cut off from the rest.  JSON body with the reason.
``/readyz``
    200 while a leader is known and live: this node holds the lease, or it
    is a follower that heard its leader within ``T``; 503 during an election.
``/leader``
    JSON: ``node_id``, ``term``, ``leader_id``, ``leader_url`` and
    ``leader_address`` (the leader's advertised URL and its ``HOST:PORT``),
    ``is_leader`` and ``holds_lease``; 503 (same body) when no leader is known.
``/status``
    JSON: ``state.status().as_dict()``, plus what the caller adds (the TCP
    counters and the ``--exec`` child on the command line).
``/metrics``
    Prometheus text format; every metric is named ``almost_raft_*``.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import cast, final

import anyio
from anyio.abc import TaskStatus

from ._messages import NodeId, Role
from ._state import RaftElectionState
from .asgi import ASGIApp, Receive, Scope, Send, send_response

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - the extra is installed with the tests
    raise ImportError(f"almost_raft.status needs prometheus_client: pip install 'almost_raft[server]' ({exc})") from exc

__all__ = ("StatusApp", "bind_socket", "serve_asgi")

logger = logging.getLogger("almost_raft")

_JSON = b"application/json"
_COUNTERS = (
    ("elections_started", "Elections started (term raised to stand)."),
    ("elections_won", "Elections won."),
    ("elections_lost", "Election rounds that timed out without a win."),
    ("pre_votes_started", "Pre-vote rounds started."),
    ("votes_granted", "Votes and pre-votes granted by this node."),
    ("votes_refused", "Votes and pre-votes refused by this node."),
    ("pre_votes_refused", "Pre-votes refused by this node."),
    ("step_downs", "Times this node stopped being leader."),
    ("check_quorum_step_downs", "Step-downs because no quorum answered within T."),
    ("transfers_started", "Leadership transfers started (TimeoutNow sent)."),
    ("transfer_retries", "TimeoutNow sent again to the next-best peer, the first target not having stood."),
    ("pre_votes_held", "Pre-votes held until this node's stickiness window ended."),
    ("late_timers", "Timers that fired more than T/2 late and were let go (an overloaded loop)."),
    ("disconnects", "PeerDisconnected notices taken from the transport."),
)
_BY_KIND = (
    ("messages_received", "received_by_kind", "Peer messages received, by kind."),
    ("messages_sent", "sent_by_kind", "Messages handed to the transport, by kind."),
    ("messages_rejected", "rejected_by_kind", "Bad input dropped, by kind."),
    ("messages_dropped", "dropped_by_kind", "Outgoing messages dropped from a full queue, by kind."),
)
_ROLES = tuple(role.value for role in Role)


def _number(value: object) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    return math.nan


@final
class StatusApp:
    """The ASGI app of the status endpoints for one node (see the module documentation).

    Args:
        state: the node's state; the app runs in the same event loop.
        urls: advertised URLs by node id, reported by ``/leader``.
        addresses: ``HOST:PORT`` of each node's listener, by node id.
        health_leader_age: ``/healthz`` fails when no leader was heard for
            this many seconds (default ``10 T``).
        extra: called for each ``/status`` and ``/metrics``; its dict is
            added to ``/status``, and its ``transport`` and ``child`` entries
            become metrics.
    """

    def __init__(
        self,
        state: RaftElectionState,
        *,
        urls: Mapping[NodeId, str] | None = None,
        addresses: Mapping[NodeId, str] | None = None,
        health_leader_age: float | None = None,
        extra: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        self.state = state
        self.urls = dict(urls or {})
        self.addresses = dict(addresses or {})
        timeout = state.config.election_timeout
        self.election_timeout = timeout
        self.health_leader_age = health_leader_age if health_leader_age is not None else 10 * timeout
        self.extra = extra
        self.leader_changes = 0
        self._last_contact = anyio.current_time()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_NodeCollector(self))

    # ------------------------------------------------------------- tracking

    async def watch(self) -> None:
        """Follow the node until its election ends: count leader changes, note leader contact.

        Run it beside the app (``run_node`` and the command line do); without
        it, ``/healthz`` still works, but a candidate looks out of touch
        since the app started rather than since it last heard its leader.
        """
        period = min(0.1, self.health_leader_age / 10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._count_changes)
            while self.state.role is not Role.TERMINATED:
                self.sample()
                with anyio.move_on_after(period):
                    await self.state.wait_changed()
            tg.cancel_scope.cancel()

    async def _count_changes(self) -> None:
        last: NodeId | None = None
        with self.state.subscribe(buffer=64) as events:
            async for event in events:
                if event.leader_id is not None and event.leader_id != last:
                    self.leader_changes += 1
                last = event.leader_id

    def sample(self) -> float:
        """Note when this node last heard a leader (or held the lease); return seconds since."""
        now = anyio.current_time()
        state = self.state
        if state.role is Role.LEADER and state.holds_lease:
            self._last_contact = now
        elif state.role is Role.FOLLOWER:
            age = state.status().leader_contact_age
            if age is not None:
                self._last_contact = max(self._last_contact, now - age)
        return now - self._last_contact

    def health(self) -> tuple[bool, dict[str, object]]:
        """``(healthy, details)`` as ``/healthz`` reports them."""
        state = self.state
        age = self.sample()
        running = state.role is not Role.TERMINATED
        healthy = running and age <= self.health_leader_age
        if not running:
            why = "the election has ended"
        elif healthy:
            why = "ok"
        else:
            why = f"no leader heard for {age:.3f} s (bound {self.health_leader_age:g} s)"
        return healthy, {
            "healthy": healthy,
            "reason": why,
            "node_id": state.self_id,
            "role": state.role.value,
            "term": state.term,
            "leader_id": state.leader_id,
            "leader_contact_age": age,
        }

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """``(ready, details)`` as ``/readyz`` reports them."""
        status = self.state.status()
        if status.role is Role.LEADER:
            ready, why = (
                status.holds_lease,
                "leads under a valid lease" if status.holds_lease else "leads without a lease",
            )
        elif status.role is Role.FOLLOWER and status.leader_id is not None:
            age = status.leader_contact_age
            ready = age is not None and age <= self.election_timeout
            why = "follows a live leader" if ready else "its leader has not been heard from lately"
        else:
            ready, why = False, "no leader is known" if status.role is not Role.TERMINATED else "the election has ended"
        return ready, {
            "ready": ready,
            "reason": why,
            "node_id": status.self_id,
            "role": status.role.value,
            "term": status.term,
            "leader_id": status.leader_id,
        }

    def leader(self) -> dict[str, object]:
        """What ``/leader`` reports."""
        state = self.state
        leader = state.leader_id
        return {
            "node_id": state.self_id,
            "term": state.term,
            "leader_id": leader,
            "leader_url": None if leader is None else self.urls.get(leader),
            "leader_address": None if leader is None else self.addresses.get(leader),
            "is_leader": state.is_leader,
            "holds_lease": state.holds_lease,
        }

    def status(self) -> dict[str, object]:
        """What ``/status`` reports."""
        out = self.state.status().as_dict()
        out["leader_changes"] = self.leader_changes
        if self.extra is not None:
            out.update(self.extra())
        return out

    def metrics(self) -> bytes:
        """The Prometheus text exposition of this node."""
        return generate_latest(self._registry)

    # ----------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        method = scope.get("method")
        path = scope.get("path")
        if method not in ("GET", "HEAD"):
            await send_response(
                send, 405, b"only GET and HEAD\n", content_type=b"text/plain", headers=[(b"allow", b"GET, HEAD")]
            )
            return
        status, body, content_type = self._route(path)
        if method == "HEAD":
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await send_response(send, status, body, content_type=content_type)

    def _route(self, path: object) -> tuple[int, bytes, bytes]:
        if path == "/metrics":
            return 200, self.metrics(), CONTENT_TYPE_LATEST.encode()
        if path == "/healthz":
            ok, details = self.health()
        elif path == "/readyz":
            ok, details = self.readiness()
        elif path == "/leader":
            details = self.leader()
            ok = details["leader_id"] is not None
        elif path == "/status":
            ok, details = True, self.status()
        else:
            return 404, b'{"error": "not found: try /healthz, /readyz, /leader, /status or /metrics"}', _JSON
        return (200 if ok else 503), json.dumps(details).encode(), _JSON


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message.get("type") == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message.get("type") == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@final
class _NodeCollector(Collector):
    """Builds every ``almost_raft_*`` metric from one ``status()`` snapshot at each scrape."""

    def __init__(self, app: StatusApp) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        app = self.app
        status = app.state.status()
        data = status.as_dict()
        healthy, _ = app.health()

        def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"almost_raft_{name}", help_text, value=value)

        info = GaugeMetricFamily("almost_raft_node_info", "This node's id (always 1).", labels=["node_id"])
        info.add_metric([str(status.self_id)], 1.0)
        yield info
        role = GaugeMetricFamily(
            "almost_raft_role", "1 for the node's current role, 0 for the others.", labels=["role"]
        )
        for name in _ROLES:
            role.add_metric([name], float(status.role.value == name))
        yield role
        yield gauge("term", "Current term.", status.term)
        yield gauge("is_leader", "1 while this node leads its term.", float(status.is_leader))
        yield gauge("holds_lease", "1 while this node leads under a valid lease.", float(status.holds_lease))
        yield gauge("lease_remaining_seconds", "Seconds left on the lease (0 without one).", status.lease_remaining)
        yield gauge("peers", "Peers in this node's view.", len(status.peer_ids))
        yield gauge("healthy", "1 while /healthz answers 200.", float(healthy))
        if status.leader_contact_age is not None:
            yield gauge(
                "leader_contact_age_seconds",
                "On a follower, seconds since its leader was last heard.",
                status.leader_contact_age,
            )
        yield CounterMetricFamily(
            "almost_raft_leader_changes", "New leaders this node learned of.", value=app.leader_changes
        )
        for name, help_text in _COUNTERS:
            yield CounterMetricFamily(f"almost_raft_{name}", help_text, value=_number(data[name]))
        for name, field, help_text in _BY_KIND:
            family = CounterMetricFamily(f"almost_raft_{name}", help_text, labels=["kind"])
            for kind, count in getattr(status, field).items():
                family.add_metric([str(kind)], float(count))
            yield family
        failures = CounterMetricFamily(
            "almost_raft_send_failures", "Sends that raised or timed out, by peer.", labels=["peer"]
        )
        for peer, count in status.send_failures_by_peer.items():
            failures.add_metric([str(peer)], float(count))
        yield failures
        acks = GaugeMetricFamily(
            "almost_raft_peer_last_ack_seconds",
            "On a leader, seconds since each peer last acknowledged.",
            labels=["peer"],
        )
        for peer, age in status.peer_last_ack:
            if age is not None:
                acks.add_metric([str(peer)], age)
        yield acks
        extra = app.extra() if app.extra is not None else {}
        transport = extra.get("transport")
        if isinstance(transport, Mapping):
            for name, value in transport.items():
                yield CounterMetricFamily(f"almost_raft_tcp_{name}", f"TcpStats.{name}", value=_number(value))
        child = extra.get("child")
        if isinstance(child, Mapping):
            yield gauge("child_running", "1 while the --exec child runs.", float(bool(child.get("running"))))
            yield CounterMetricFamily(
                "almost_raft_child_starts", "--exec children started.", value=_number(child.get("starts", 0))
            )
            exits = CounterMetricFamily("almost_raft_child_exits", "--exec children ended, by cause.", labels=["by"])
            by_cause = child.get("exits")
            if isinstance(by_cause, Mapping):
                for by, count in by_cause.items():
                    exits.add_metric([str(by)], _number(count))
            yield exits


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on *host*:*port* (port 0: any free port).

    Raises:
        OSError: the address cannot be bound.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _running_trio() -> bool:
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


async def serve_asgi(
    app: ASGIApp,
    sock: socket.socket,
    *,
    graceful_timeout: float = 0.5,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI *app* with hypercorn on the listening *sock* (it takes it over), on asyncio or trio.

    Runs until cancelled, then stops gracefully: open requests get
    ``graceful_timeout`` seconds.  The lifespan protocol is answered here;
    the app sees only HTTP and websocket connections.
    """
    from hypercorn.config import Config
    from hypercorn.typing import Framework

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("almost_raft.http")
    config.graceful_timeout = graceful_timeout

    async def without_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "lifespan":
            await _lifespan(receive, send)
        else:
            await app(scope, receive, send)

    framework = cast(Framework, without_lifespan)
    stop = anyio.Event()

    async def serve() -> None:
        # Shielded: hypercorn stops through its shutdown trigger, not by cancellation.
        with anyio.CancelScope(shield=True):
            if _running_trio():
                from hypercorn.trio import serve as trio_serve

                await trio_serve(framework, config, shutdown_trigger=stop.wait)
            else:
                from hypercorn.asyncio import serve as asyncio_serve

                await asyncio_serve(framework, config, shutdown_trigger=stop.wait)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            stop.set()
