"""``LeaderOnly``: three replicas behind a real ASGI server (hypercorn) and a real HTTP client (httpx).

Each replica is a node of a ``LocalCluster`` (real clock) with its own web
server on 127.0.0.1; guarded requests must end at the lease holder, and
during a failover get 503, never reaching two replicas.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from almost_raft import RaftElectionState
from almost_raft._messages import NodeId
from almost_raft.asgi import LeaderOnly, Receive, Scope, Send, send_response
from almost_raft.status import bind_socket, serve_asgi
from almost_raft.testing import LocalCluster

OPTIONS: dict[str, Any] = {"election_timeout": 0.15, "heartbeat_interval": 0.05, "message_timeout": 0.05}


@dataclass
class Handled:
    request_id: str
    replica: NodeId
    term: object
    held_lease: bool
    at: float


@dataclass
class Replicas:
    cluster: LocalCluster
    urls: dict[NodeId, str]
    handled: list[Handled] = field(default_factory=list)


def make_app(replicas: Replicas, node_id: NodeId) -> LeaderOnly:
    state = replicas.cluster.states[node_id]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")  # type: ignore[operator]
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])  # type: ignore[call-overload]
        token = scope.get("almost_raft")
        term = token.get("term") if isinstance(token, dict) else None
        if scope["path"] != "/public":
            replicas.handled.append(
                Handled(
                    headers.get(b"x-request-id", b"").decode(), node_id, term, state.holds_lease, anyio.current_time()
                )
            )
        reply = {"replica": node_id, "term": term, "echo": body.decode()}
        await send_response(send, 200, json.dumps(reply).encode(), content_type=b"application/json")

    return LeaderOnly(app, state, urls=replicas.urls, prefixes=["/work"])


@asynccontextmanager
async def serving_replicas() -> AsyncIterator[Replicas]:
    cluster = LocalCluster(3, latency=0.001, **OPTIONS)
    try:
        async with cluster, anyio.create_task_group() as tg:
            socks = {node_id: bind_socket("127.0.0.1", 0) for node_id in cluster.ids}
            replicas = Replicas(cluster, {i: f"http://127.0.0.1:{s.getsockname()[1]}" for i, s in socks.items()})
            for node_id, sock in socks.items():
                await tg.start(serve_asgi, make_app(replicas, node_id), sock)
            yield replicas
            tg.cancel_scope.cancel()
    finally:
        for control in cluster.controls.values():
            control.close()


async def wait_lease(cluster: LocalCluster) -> NodeId:
    leader = (await cluster.wait_for_leader()).leader_id
    assert leader is not None
    state = cluster.states[leader]
    with anyio.fail_after(5):
        while not state.holds_lease:
            await state.wait_changed()
    return leader


async def test_a_request_to_a_follower_ends_at_the_leader() -> None:
    async with serving_replicas() as replicas, httpx.AsyncClient(timeout=5, follow_redirects=True) as client:
        leader = await wait_lease(replicas.cluster)
        follower = next(i for i in replicas.cluster.ids if i != leader)
        response = await client.post(f"{replicas.urls[follower]}/work/1?x=1", content=b"payload")
        assert response.status_code == 200, response.text
        assert response.json() == {"replica": leader, "term": replicas.cluster.states[leader].term, "echo": "payload"}
        assert [r.status_code for r in response.history] == [307]
        assert response.history[0].headers["location"] == f"{replicas.urls[leader]}/work/1?x=1"
        assert response.history[0].headers["x-almost-raft-leader"] == str(leader)
        # Unguarded routes are served by every replica.
        public = await client.get(f"{replicas.urls[follower]}/public")
        assert public.json()["replica"] == follower
        assert not public.history


async def test_requests_during_a_failover_get_503_and_never_reach_two_replicas() -> None:
    async with serving_replicas() as replicas, httpx.AsyncClient(timeout=5, follow_redirects=True) as client:
        cluster = replicas.cluster
        old = await wait_lease(cluster)
        statuses: list[tuple[int, NodeId | None, float]] = []
        ids = itertools.count()

        async def ask(node_id: NodeId) -> None:
            request_id = str(next(ids))
            response = await client.post(f"{replicas.urls[node_id]}/work", headers={"x-request-id": request_id})
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1"
            replica = response.json().get("replica") if response.status_code == 200 else None
            statuses.append((response.status_code, replica, anyio.current_time()))

        cluster.isolate(old)
        with anyio.fail_after(10):
            while not any(code == 200 and replica not in (None, old) for code, replica, _ in statuses):
                async with anyio.create_task_group() as tg:
                    for node_id in cluster.ids:
                        tg.start_soon(ask, node_id)
                await anyio.sleep(0.01)
        cluster.heal_all()

        codes = {code for code, _, _ in statuses}
        assert codes <= {200, 503}, codes
        assert 503 in codes, "no request saw the failover"
        request_ids = [h.request_id for h in replicas.handled]
        assert len(request_ids) == len(set(request_ids)), "a request reached two replicas"
        assert all(h.held_lease for h in replicas.handled)
        new_first = min(h.at for h in replicas.handled if h.replica != old)
        assert all(h.at < new_first for h in replicas.handled if h.replica == old)
        terms = [h.term for h in sorted(replicas.handled, key=lambda h: h.at)]
        assert terms == sorted(terms)  # type: ignore[type-var]


async def test_no_leader_known_means_503_with_retry_after() -> None:
    async with serving_replicas() as replicas, httpx.AsyncClient(timeout=5) as client:
        await wait_lease(replicas.cluster)
        replicas.cluster.partition(["n1"], ["n2"], ["n3"])
        with anyio.fail_after(5):
            while True:
                response = await client.get(f"{replicas.urls['n1']}/work")
                if response.status_code == 503 and response.json()["leader_id"] is None:
                    break
                await anyio.sleep(0.02)
        assert response.headers["retry-after"] == "1"
        assert "election" in response.json()["error"]


def test_guard_arguments() -> None:
    state, control = RaftElectionState.init("a", election_timeout=0.2, heartbeat_interval=0.05)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError

    guard = LeaderOnly(app, state, urls={}, prefixes=["/jobs/"], methods=["post"])
    assert guard.leader_max_age == 0.2
    assert guard.guards("/jobs", "POST")
    assert guard.guards("/jobs/7", "post")
    assert not guard.guards("/jobsx", "POST")
    assert not guard.guards("/jobs/7", "GET")
    with pytest.raises(ValueError, match="retry_after"):
        LeaderOnly(app, state, urls={}, retry_after=-1)
    control.close()
