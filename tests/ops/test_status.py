"""``/healthz``, ``/readyz``, ``/leader``, ``/status`` and ``/metrics`` over real HTTP.

In one process (``LocalCluster`` on the real clock, each node's ``StatusApp``
served by hypercorn, on asyncio and on trio), and over real node processes
(``--status-listen``), where ``/healthz`` must turn unhealthy on a node cut
off from its leader.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from almost_raft._messages import NodeId
from almost_raft.status import StatusApp, bind_socket, serve_asgi
from almost_raft.testing import LocalCluster
from tests.network._procs import free_ports

from ._exec_procs import ExecCluster, poll

AGE = 0.6  # health_leader_age of these tests
OPTIONS: dict[str, Any] = {"election_timeout": 0.15, "heartbeat_interval": 0.05, "message_timeout": 0.05}


@asynccontextmanager
async def served_cluster() -> AsyncIterator[tuple[LocalCluster, dict[NodeId, str]]]:
    """Three nodes in this process, each with its status app on a port of 127.0.0.1; yields the base URLs."""
    cluster = LocalCluster(3, latency=0.001, **OPTIONS)
    try:
        async with cluster, anyio.create_task_group() as tg:
            socks = {node_id: bind_socket("127.0.0.1", 0) for node_id in cluster.ids}
            urls = {node_id: f"http://127.0.0.1:{sock.getsockname()[1]}" for node_id, sock in socks.items()}
            for node_id, sock in socks.items():
                app = StatusApp(cluster.states[node_id], urls=urls, health_leader_age=AGE)
                tg.start_soon(app.watch)
                await tg.start(serve_asgi, app, sock)
            yield cluster, urls
            tg.cancel_scope.cancel()
    finally:
        for control in cluster.controls.values():
            control.close()


async def wait_status(client: httpx.AsyncClient, url: str, status: int, within: float) -> httpx.Response:
    with anyio.fail_after(within):
        while True:
            response = await client.get(url)
            if response.status_code == status:
                return response
            await anyio.sleep(0.02)


async def test_endpoints_and_a_cut_off_follower_turning_unhealthy() -> None:
    async with served_cluster() as (cluster, urls), httpx.AsyncClient(timeout=5) as client:
        leader = (await cluster.wait_for_leader()).leader_id
        assert leader is not None
        for node_id, url in urls.items():
            await wait_status(client, f"{url}/readyz", 200, 5)
            health = await client.get(f"{url}/healthz")
            assert health.status_code == 200, health.text
            assert health.json()["healthy"] is True
            info = (await client.get(f"{url}/leader")).json()
            assert info["leader_id"] == leader
            assert info["leader_url"] == urls[leader]
            assert info["is_leader"] is (node_id == leader)
            status = (await client.get(f"{url}/status")).json()
            assert status["self_id"] == node_id
            assert status["leader_changes"] >= 1
        metrics = (await client.get(f"{urls[leader]}/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        assert all(name.startswith("almost_raft_") for name in families), sorted(families)
        for name in ("role", "term", "leader_changes", "lease_remaining_seconds", "elections_started", "send_failures"):
            assert f"almost_raft_{name}" in families, name
        for name in ("messages_received", "messages_sent", "peer_last_ack_seconds", "holds_lease"):
            assert f"almost_raft_{name}" in families, name
        role = {s.labels["role"]: s.value for s in families["almost_raft_role"].samples}
        assert role["leader"] == 1.0
        acks = {s.labels["peer"] for s in families["almost_raft_peer_last_ack_seconds"].samples}
        assert acks == {str(i) for i in cluster.ids if i != leader}
        assert (await client.get(f"{urls[leader]}/nope")).status_code == 404
        assert (await client.post(f"{urls[leader]}/healthz")).status_code == 405

        follower = next(i for i in cluster.ids if i != leader)
        cut_at = anyio.current_time()
        cluster.isolate(follower)
        sick = await wait_status(client, f"{urls[follower]}/healthz", 503, 5)
        assert anyio.current_time() - cut_at >= AGE - 0.05
        assert "no leader heard" in sick.json()["reason"]
        assert (await client.get(f"{urls[follower]}/readyz")).status_code == 503
        for node_id in cluster.ids:
            if node_id != follower:
                assert (await client.get(f"{urls[node_id]}/healthz")).status_code == 200
        cluster.heal_all()
        await wait_status(client, f"{urls[follower]}/healthz", 200, 5)


async def test_no_leader_means_503_on_leader_and_readyz() -> None:
    cluster = LocalCluster(3, latency=0.001, **OPTIONS)
    try:
        async with cluster:
            app = StatusApp(cluster.states["n1"], health_leader_age=AGE)
            for node_id in ("n2", "n3"):
                await cluster.crash(node_id)
            async with anyio.create_task_group() as tg:
                sock = bind_socket("127.0.0.1", 0)
                url = f"http://127.0.0.1:{sock.getsockname()[1]}"
                tg.start_soon(app.watch)
                await tg.start(serve_asgi, app, sock)
                async with httpx.AsyncClient(timeout=5) as client:
                    leader = await client.get(f"{url}/leader")
                    assert leader.status_code == 503
                    assert leader.json()["leader_id"] is None
                    assert (await client.get(f"{url}/readyz")).status_code == 503
                    # Just started: it gets health_leader_age to meet a leader, then turns unhealthy.
                    await wait_status(client, f"{url}/healthz", 503, 5)
                    head = await client.head(f"{url}/healthz")
                    assert head.status_code == 503
                    assert head.content == b""
                tg.cancel_scope.cancel()
    finally:
        for control in cluster.controls.values():
            control.close()


@pytest.mark.slow
def test_status_listen_over_processes(exec_cluster: Callable[..., ExecCluster]) -> None:
    """``--status-listen`` on real nodes running ``--exec``: the leader's node stops being healthy when cut off."""
    ports = free_ports(3)
    ids = ["a", "b", "c"]
    cluster = exec_cluster(ids)
    base = {node_id: f"http://127.0.0.1:{port}" for node_id, port in zip(ids, ports, strict=True)}
    for node_id in ids:
        args = cluster.args(node_id)
        at = args.index("--exec")
        extra = ["--status-listen", f"127.0.0.1:{ports[ids.index(node_id)]}", "--health-leader-age", str(AGE)]
        extra += ["--advertise-url", base[node_id]]
        extra += [x for peer in ids if peer != node_id for x in ("--peer-url", f"{peer}={base[peer]}")]
        cluster[node_id].start(args[:at] + extra + args[at:])
    child = cluster.wait_child()
    with httpx.Client(timeout=5) as client:

        def get(node_id: str, path: str) -> httpx.Response:
            return client.get(base[node_id] + path)

        for node_id in ids:
            poll(lambda: get(node_id, "/readyz").status_code == 200, 10, f"{node_id} ready")  # noqa: B023 - called at once
            assert get(node_id, "/healthz").status_code == 200
            assert get(node_id, "/leader").json()["leader_url"] == base[child.node]
        status = get(child.node, "/status").json()
        assert status["child"]["running"] is True
        assert status["transport"]["frames_received"] > 0
        families = {f.name: f for f in text_string_to_metric_families(get(child.node, "/metrics").text)}
        assert families["almost_raft_child_running"].samples[0].value == 1.0
        assert all(name.startswith("almost_raft_") for name in families)

        others = [i for i in ids if i != child.node]
        for node_id in others:
            cluster[node_id].signal(signal.SIGSTOP)
        cut_at = time.monotonic()
        poll(lambda: get(child.node, "/healthz").status_code == 503, 5, "the cut-off node to turn unhealthy")
        assert time.monotonic() - cut_at >= AGE - 0.05
        assert get(child.node, "/readyz").status_code == 503
        assert get(child.node, "/status").json()["child"]["running"] is False
        for node_id in others:
            cluster[node_id].signal(signal.SIGCONT)
        poll(lambda: get(child.node, "/healthz").status_code == 200, 10, "health back")
