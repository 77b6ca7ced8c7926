"""Mutual TLS between node processes: the cluster works, strangers get nothing in."""

from __future__ import annotations

import signal
import socket
import ssl
from collections.abc import Callable

import pytest

from almost_raft import Heartbeat, RequestVote, TimeoutNow
from almost_raft.transports import encode_message

from ._procs import ProcCluster
from .conftest import Certs
from .test_processes import assert_one_leader_per_term

pytestmark = pytest.mark.slow


def _attack_frames(term: int, claimed: str) -> bytes:
    """Messages that would depose the leader if they got in."""
    return b"".join(
        encode_message(m)
        for m in (
            Heartbeat(term + 100, claimed, 1),
            RequestVote(term + 100, claimed),
            TimeoutNow(term + 100, claimed),
        )
    )


def _send_and_wait_for_close(sock: socket.socket, data: bytes) -> None:
    """Send *data*, end our side, and wait until the node closed the connection (it read everything)."""
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    except (OSError, ssl.SSLError):
        pass  # the node refused us: that is the point
    finally:
        sock.close()


def _tls_client(port: int, server_name: str, certs: Certs, cert: str | None) -> ssl.SSLSocket | None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(certs.cert(cert), certs.key(cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_name)
    except (OSError, ssl.SSLError):
        raw.close()
        return None


def test_mutual_tls_cluster_elects_and_keeps_strangers_out(procs: Callable[..., ProcCluster], certs: Certs) -> None:
    ids = ["a", "b", "c"]
    cluster = procs(ids, election_timeout=0.3, per_node={i: certs.tls_args(i) for i in ids})
    cluster.start()
    term, leader = cluster.wait_agreed(timeout=20)
    target = next(i for i in ids if i != leader)
    port = cluster[target].port
    claimed = leader  # every stranger pretends to be the leader, with a much higher term
    frames = _attack_frames(term, claimed)

    # 1. Plain TCP into a TLS listener.
    _send_and_wait_for_close(socket.create_connection(("127.0.0.1", port), timeout=10), frames)
    # 2. TLS without a client certificate.
    sock = _tls_client(port, target, certs, None)
    if sock is not None:
        _send_and_wait_for_close(sock, frames)
    # 3. TLS with a certificate for "a" from another CA.
    sock = _tls_client(port, target, certs, "rogue-a")
    if sock is not None:
        _send_and_wait_for_close(sock, frames)
    # 4. A valid certificate of the cluster's CA, for "x", claiming to be the leader.
    sock = _tls_client(port, target, certs, "x")
    assert sock is not None, "a certificate of the cluster's CA must be accepted"
    _send_and_wait_for_close(sock, frames)

    # Nothing changed: the cluster still agrees on the same leader and term.
    assert cluster.agreed(ids) == (term, leader)
    for node_id in ids:
        cluster[node_id].signal(signal.SIGTERM)
    for node_id in ids:
        assert cluster[node_id].wait(10) == 0
    stopped = cluster[target].stopped_record()
    assert stopped is not None
    transport = stopped["transport"]
    assert transport["tls_handshake_failures"] >= 3
    assert transport["identity_mismatches"] == 3
    assert all(r["term"] < term + 100 for n in cluster.nodes.values() for r in n.leader_records())
    assert_one_leader_per_term(cluster)
