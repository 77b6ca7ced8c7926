"""Hostile clients against a real listener: idle, trickling and half-open connections.

Three ``python -m almost_raft`` processes on 127.0.0.1.  While a crowd of
connections that never deliver a valid frame sits on node ``a``'s port, the
other two nodes are killed and restarted, so that they must connect to ``a``
again: the cluster must still elect a leader that ``a`` names too.
Throughout, ``a``'s resident memory must level off and its log stay at a few
lines; at the end its ``stopped`` line shows the guard at work.

Before the listener had timeouts and limits, 256 such connections took every
slot of ``a`` for good: it stayed at "no leader" while the others elected.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence

import pytest

from almost_raft import Heartbeat
from almost_raft.transports import encode_message

from ._procs import ProcCluster
from .test_processes import assert_one_leader_per_term

pytestmark = pytest.mark.slow

T = 0.15
CROWD = 300
STRANGER_FRAME = encode_message(Heartbeat(7, "zz-stranger", 1))
LOG_LINES_MAX = 12
"""Lines ``a`` may log while under attack: rate-limited reports, and the peers' restarts."""
RSS_GROWTH_MAX = 6 * 1024 * 1024
"""Growth of ``a``'s resident memory allowed between the middle and the end of the attack."""


def rss_bytes(pid: int) -> int:
    """VmRSS of *pid*, from /proc/PID/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Crowd:
    """Keeps *count* connections to a port open from a thread, reopening each one the listener closes.

    Args:
        port: the listener's port on 127.0.0.1.
        count: how many connections to hold.
        sources: local addresses to connect from, in turn.
        trickle: send one byte of this every *interval* on every connection (``None``: stay idle).
        half_open: make each connection vanish right after connecting, without FIN or RST
            (``TCP_REPAIR``), so the listener holds a connection whose client is gone; then
            a new wave of *count* every *interval*, each wave from the next of *sources*
            (from one address, a new connection could reuse a vanished one's port, and the
            listener's kernel would then reset the old connection).
        interval: between two trickled bytes, and the pause before reopening a closed connection.
    """

    def __init__(
        self,
        port: int,
        count: int,
        *,
        sources: Sequence[str] = ("127.0.0.1",),
        trickle: bytes | None = None,
        half_open: bool = False,
        interval: float = 0.25,
    ) -> None:
        self.port = port
        self.count = count
        self.sources = list(sources)
        self.trickle = trickle
        self.half_open = half_open
        self.interval = interval
        self.opened = 0
        self.closed_by_listener = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostile crowd", daemon=True)

    def __enter__(self) -> Crowd:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _open(self, slot: int) -> socket.socket | None:
        turn = self.opened // self.count if self.half_open else slot
        source = self.sources[turn % len(self.sources)]
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=0.5, source_address=(source, 0))
        except OSError:
            self.errors += 1
            return None
        self.opened += 1
        if self.half_open:
            # Repair mode: close() then frees the socket silently, as a client whose host vanished.
            sock.setsockopt(socket.IPPROTO_TCP, 19, 1)  # TCP_REPAIR
            sock.close()
            return None
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        reopen_at: dict[int, float] = dict.fromkeys(range(self.count), 0.0)
        open_socks: dict[int, socket.socket] = {}
        positions: dict[int, int] = {}
        next_drip = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for slot, when in list(reopen_at.items()):
                    if when <= now and not self._stop.is_set():
                        del reopen_at[slot]
                        sock = self._open(slot)
                        if sock is not None:
                            open_socks[slot] = sock
                            positions[slot] = 0
                            selector.register(sock, selectors.EVENT_READ, slot)
                        elif not self.half_open:
                            reopen_at[slot] = now + self.interval
                if self.trickle is not None and now >= next_drip:
                    next_drip = now + self.interval
                    for slot, sock in open_socks.items():
                        sent = positions.get(slot, 0)  # each connection trickles a frame from its start
                        positions[slot] = sent + 1
                        with contextlib.suppress(OSError):
                            sock.send(self.trickle[sent % len(self.trickle) : sent % len(self.trickle) + 1])
                if self.half_open and not reopen_at:
                    reopen_at = dict.fromkeys(range(self.count), now + self.interval)  # the next wave
                for key, _ in selector.select(timeout=0.02):
                    slot = key.data
                    sock = open_socks.pop(slot)
                    selector.unregister(sock)
                    with contextlib.suppress(OSError):
                        sock.recv(4096)
                    sock.close()
                    self.closed_by_listener += 1
                    reopen_at[slot] = time.monotonic() + self.interval
        finally:
            for sock in open_socks.values():
                sock.close()
            selector.close()


class Sampler:
    """Samples a process's resident memory from a thread, every 0.1 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic(), rss_bytes(self.pid)))

    def growth_after(self, since: float) -> int:
        """How much the largest sample after *since* exceeds the largest one before."""
        before = [rss for at, rss in self.samples if at < since]
        after = [rss for at, rss in self.samples if at >= since]
        assert before, "no sample before the midpoint"
        assert after, "no sample after the midpoint"
        return max(after) - max(before)


@pytest.fixture
def cluster_on(procs: Callable[..., ProcCluster]) -> Callable[[str], ProcCluster]:
    """Start nodes a, b and c, with a on the given backend."""

    def make(backend: str) -> ProcCluster:
        # With storage: a node restarted without it may vote twice in one term (README, safety guarantees).
        cluster = procs(["a", "b", "c"], election_timeout=T, storage=True, per_node={"a": ["--backend", backend]})
        cluster.start()
        return cluster

    return make


def survive(cluster: ProcCluster, crowd: Crowd, settle: Callable[[], bool]) -> None:
    """Under *crowd*: restart b and c, check that all three elect, memory levels off, and the log stays short."""
    term, _ = cluster.wait_agreed(timeout=20)
    a = cluster["a"]
    log_before = len(a.stderr_text().splitlines())
    with Sampler(a.pid) as sampler, crowd:
        cluster.wait_for(settle, 20, "the crowd to be in place")
        for node_id in ("b", "c"):
            cluster[node_id].kill()
        cluster.start("b", "c")  # fresh processes: they must connect to a again
        cluster.wait_agreed(timeout=30, min_term=term + 1)  # a names the leader too
        midpoint = time.monotonic()
        # Not a wait for a condition: the crowd stays on a while longer, for memory to show its trend.
        time.sleep(2.5)
        assert cluster.agreed(["a", "b", "c"]) is not None, cluster.describe()
    growth = sampler.growth_after(midpoint)
    logged = a.stderr_text().splitlines()[log_before:]
    a.signal(signal.SIGTERM)
    assert a.wait(10) == 0
    stopped = a.stopped_record()
    assert stopped is not None
    guard = stopped["transport"]
    print(  # shown when a test fails
        f"crowd: opened {crowd.opened}, closed by a {crowd.closed_by_listener}; a's memory grew {growth} B; "
        f"a logged {len(logged)} lines; {guard}"
    )
    assert growth < RSS_GROWTH_MAX, f"a's resident memory grew by {growth} bytes under the crowd"
    assert len(logged) <= LOG_LINES_MAX, "a logged too much:\n" + "\n".join(logged)
    assert guard["first_frame_timeouts"] + guard["connections_evicted"] + guard["connections_refused"] > 0, guard
    assert_one_leader_per_term(cluster)


def test_idle_connections_cannot_cut_a_node_off(cluster_on: Callable[[str], ProcCluster]) -> None:
    cluster = cluster_on("asyncio")
    sources = [f"127.0.0.{i}" for i in range(2, 7)]  # 5 addresses x 60: more than a's 256 slots in all
    crowd = Crowd(cluster["a"].port, CROWD, sources=sources)
    survive(cluster, crowd, lambda: crowd.opened >= CROWD)


def test_a_trickle_of_bytes_cannot_hold_connections(cluster_on: Callable[[str], ProcCluster]) -> None:
    cluster = cluster_on("trio")
    # From the peers' own address, one byte per connection every 0.25 s: no frame ever completes in time.
    crowd = Crowd(cluster["a"].port, CROWD, trickle=STRANGER_FRAME)
    survive(cluster, crowd, lambda: crowd.opened >= CROWD and crowd.closed_by_listener > 0)


def test_half_open_clients_cannot_hold_connections(cluster_on: Callable[[str], ProcCluster]) -> None:
    probe = socket.socket()
    try:
        probe.setsockopt(socket.IPPROTO_TCP, 19, 1)  # TCP_REPAIR needs CAP_NET_ADMIN
    except OSError as exc:
        pytest.skip(f"half-open clients are made with TCP_REPAIR, which needs CAP_NET_ADMIN: {exc}")
    finally:
        probe.close()
    cluster = cluster_on("asyncio")
    # Waves of clients that connect and vanish without a FIN: the kernel keeps the
    # listener's side open, and nothing will ever arrive on it.
    sources = [f"127.0.0.{i}" for i in range(10, 70)]
    crowd = Crowd(cluster["a"].port, 100, sources=sources, half_open=True)
    survive(cluster, crowd, lambda: crowd.opened >= CROWD)
