"""Export every node's ``status()`` as Prometheus metrics (needs the optional ``prometheus_client``).

A 3-node ``LocalCluster`` runs for a few seconds while an HTTP endpoint on
127.0.0.1 serves ``/metrics``.  Counters that only grow (elections, messages
by kind, send failures by peer) become Prometheus counters; the rest (term,
lease, ages, role) become gauges.  Midway the demo hands leadership over, so
the numbers move; at the end it scrapes its own endpoint once and prints the
``almost_raft`` lines.

``status()`` must be read on the event loop (it reads ``anyio.current_time()``),
while ``prometheus_client`` serves scrapes from a thread of its own.  So the
loop takes a snapshot of every node's ``status().as_dict()`` every
``--interval`` seconds and publishes it whole; a scrape only reads the latest.

Run it with ``python examples/prometheus_metrics.py --port 9464`` (``--port 0``
picks a free port; ``--backend trio``, ``--seconds``).  Without
``prometheus_client`` it says so and exits 0: ``pip install prometheus-client``.
"""

from __future__ import annotations

import argparse
import urllib.request
from collections.abc import Iterator

import anyio

from almost_raft.testing import LocalCluster

try:
    from prometheus_client import CollectorRegistry, start_http_server  # type: ignore[import-not-found, unused-ignore]
    from prometheus_client.core import (  # type: ignore[import-not-found, unused-ignore]
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
    )
except ImportError:
    HAVE_PROMETHEUS = False
else:
    HAVE_PROMETHEUS = True

PREFIX = "almost_raft"
COUNTERS = (
    "elections_started",
    "elections_won",
    "elections_lost",
    "pre_votes_started",
    "votes_granted",
    "votes_refused",
    "pre_votes_refused",
    "step_downs",
    "check_quorum_step_downs",
    "transfers_started",
)
BY_KIND = {  # per-kind counters; their sum is the total of the same name in Status
    "received_by_kind": "messages_received",
    "sent_by_kind": "messages_sent",
    "rejected_by_kind": "messages_rejected",
    "dropped_by_kind": "messages_dropped",
}
GAUGES = {  # name in Status -> (metric name, help)
    "term": ("term", "Current term."),
    "is_leader": ("is_leader", "1 while the node leads its term."),
    "holds_lease": ("holds_lease", "1 while the node leads under a valid lease."),
    "lease_remaining": ("lease_remaining_seconds", "Seconds left on the lease."),
    "leader_contact_age": ("leader_contact_age_seconds", "Seconds since a follower last accepted a heartbeat."),
    "candidacy_paused": ("candidacy_paused", "1 while pause_candidacy() is in force."),
}
ROLES = ("follower", "candidate", "leader", "terminated")

Snapshot = dict[str, dict[str, object]]  # node id -> Status.as_dict()


class StatusCollector:
    """A Prometheus collector over the latest snapshot; safe to call from the server's thread."""

    def __init__(self) -> None:
        self.snapshot: Snapshot = {}  # replaced whole by the event loop, never changed in place

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        for name in COUNTERS:
            counter = CounterMetricFamily(f"{PREFIX}_{name}", f"Status.{name}", labels=["node"])
            for node, status in snapshot.items():
                counter.add_metric([node], number(status[name]))
            yield counter
        for field, total in BY_KIND.items():
            counter = CounterMetricFamily(
                f"{PREFIX}_{total}", f"Status.{total}, by message kind", labels=["node", "kind"]
            )
            for node, status in snapshot.items():
                for kind, count in mapping(status[field]).items():
                    counter.add_metric([node, kind], number(count))
            yield counter
        failures = CounterMetricFamily(f"{PREFIX}_send_failures", "Failed sends, by peer", labels=["node", "peer"])
        for node, status in snapshot.items():
            for peer, count in mapping(status["send_failures_by_peer"]).items():
                failures.add_metric([node, peer], number(count))
        yield failures
        for field, (name, help_text) in GAUGES.items():
            gauge = GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=["node"])
            for node, status in snapshot.items():
                if status[field] is not None:  # e.g. no leader contact yet
                    gauge.add_metric([node], number(status[field]))
            yield gauge
        role = GaugeMetricFamily(f"{PREFIX}_role", "1 for the node's current role.", labels=["node", "role"])
        ack = GaugeMetricFamily(
            f"{PREFIX}_peer_last_ack_seconds",
            "On a leader, seconds since each peer's last ack.",
            labels=["node", "peer"],
        )
        for node, status in snapshot.items():
            for name in ROLES:
                role.add_metric([node, name], float(status["role"] == name))
            for peer, age in mapping(status["peer_last_ack"]).items():
                if age is not None:
                    ack.add_metric([node, peer], number(age))
        yield role
        yield ack


def number(value: object) -> float:
    if not isinstance(value, (int, float)):  # bool is an int
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def mapping(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a dict, got {value!r}")
    return {str(k): v for k, v in value.items()}


def take_snapshot(cluster: LocalCluster) -> Snapshot:
    return {str(node): cluster.states[node].status().as_dict() for node in cluster.ids}


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def demo(port: int, seconds: float, interval: float) -> None:
    collector = StatusCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    print(f"serving {url} for {seconds:.1f} s")
    try:
        async with LocalCluster(3, latency=0.001, election_timeout=0.150, heartbeat_interval=0.050) as cluster:
            with anyio.move_on_after(seconds):
                async with anyio.create_task_group() as tg:

                    async def sample() -> None:
                        while True:
                            collector.snapshot = take_snapshot(cluster)
                            await anyio.sleep(interval)

                    tg.start_soon(sample)
                    leader = await cluster.wait_for_leader()
                    print(f"{leader.leader_id} leads term {leader.term}")
                    await anyio.sleep(seconds / 2)
                    assert leader.leader_id is not None
                    cluster.states[leader.leader_id].transfer_leadership()
                    leader = await cluster.wait_for_leader(after_term=leader.term)
                    print(f"leadership handed over: {leader.leader_id} leads term {leader.term}")
                    await anyio.sleep_forever()
            collector.snapshot = take_snapshot(cluster)
            text = await anyio.to_thread.run_sync(scrape, url)
        for control in cluster.controls.values():
            control.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    lines = [line for line in text.splitlines() if line.startswith(PREFIX) and not line.endswith(" 0.0")]
    print(f"one scrape of {url}: {len(text.splitlines())} lines; the non-zero almost_raft samples:")
    for line in lines:
        print("   ", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=9464, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long the cluster runs")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between two status() snapshots")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    if not HAVE_PROMETHEUS:
        print("prometheus_client is not installed; this example is optional: pip install prometheus-client")
        return
    anyio.run(demo, args.port, args.seconds, args.interval, backend=args.backend)


if __name__ == "__main__":
    main()
