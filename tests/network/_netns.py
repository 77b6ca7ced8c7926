"""Network namespaces for real partitions: N hosts on one switch, built and torn down by the caller.

``Switch(count)`` makes one namespace holding a bridge (the switch) and
``count`` host namespaces, each with a veth whose other end is a port of that
bridge; host ``i`` has the address ``10.77.0.<i+1>/24`` on its ``eth0``.
Cutting a host off is setting its switch port down: the host's ``eth0``
loses its carrier and every packet to or from it is dropped, without a reset
or an ICMP error, as when a cable is pulled; healing sets the port up again.
Splitting moves some ports to a second bridge of the switch: those hosts
still reach each other but not the rest, as on two sides of a broken link.

Everything lives inside the new namespaces, whose names are unique per
process and per switch (``arNNNNN-K-sw``, ``arNNNNN-K-h0`` ...), so nothing
touches the root namespace's links or routes and two runs never collide.
``close()`` deletes the namespaces (and with them the bridge and the veths);
the caller must first stop the processes it ran inside them.

Needs root (``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN``) and the ``ip`` command
from iproute2: ``unavailable()`` says why not, for ``pytest.skip``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Sequence

SUBNET = "10.77.0"
"""The hosts' /24: private and inside the namespaces only."""

_serial = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be built here (``None``: they can)."""
    if shutil.which("ip") is None:
        return "needs the 'ip' command (iproute2) to build network namespaces"
    if os.geteuid() != 0:
        return "needs root to build network namespaces (ip netns add)"
    name = f"ar{os.getpid()}-probe{next(_serial)}"
    try:
        result = _ip("netns", "add", name, check=False)
        if result.returncode != 0:
            return f"cannot create a network namespace: {result.stderr.strip() or result.returncode}"
        result = _ip("-n", name, "link", "add", "probe0", "type", "bridge", check=False)
        if result.returncode != 0:
            return f"cannot create a bridge in a network namespace: {result.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


class Switch:
    """*count* host namespaces on one bridge; see the module documentation.

    Args:
        count: the number of hosts.
    """

    def __init__(self, count: int) -> None:
        self.tag = f"ar{os.getpid()}-{next(_serial)}"
        self.switch = f"{self.tag}-sw"
        self.hosts = [f"{self.tag}-h{i}" for i in range(count)]
        self._made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        sw = self.switch
        _ip("netns", "add", sw)
        self._made.append(sw)
        _ip("-n", sw, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip("-n", sw, "link", "set", "br0", "up")
        _ip("-n", sw, "link", "add", "br1", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip("-n", sw, "link", "set", "br1", "up")
        for index, host in enumerate(self.hosts):
            _ip("netns", "add", host)
            self._made.append(host)
            _ip("-n", host, "link", "set", "lo", "up")
            _ip("-n", sw, "link", "add", self.port(index), "type", "veth", "peer", "name", "eth0", "netns", host)
            _ip("-n", sw, "link", "set", self.port(index), "master", "br0", "up")
            _ip("-n", host, "addr", "add", f"{self.address(index)}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")

    def port(self, index: int) -> str:
        """The name of host *index*'s port on the switch."""
        return f"p{index}"

    def address(self, index: int) -> str:
        """Host *index*'s IPv4 address."""
        return f"{SUBNET}.{index + 1}"

    def exec_prefix(self, index: int) -> list[str]:
        """The command prefix that runs a program in host *index*'s namespace."""
        return ["ip", "netns", "exec", self.hosts[index]]

    def cut(self, indexes: Sequence[int]) -> None:
        """Partition the hosts *indexes* from the others (and from each other): set their ports down."""
        for index in indexes:
            _ip("-n", self.switch, "link", "set", self.port(index), "down")

    def heal(self, indexes: Sequence[int]) -> None:
        """Set the ports of the hosts *indexes* up again."""
        for index in indexes:
            _ip("-n", self.switch, "link", "set", self.port(index), "up")

    def split(self, indexes: Sequence[int]) -> None:
        """Move the hosts *indexes* to a second bridge: they reach each other, but not the rest."""
        for index in indexes:
            _ip("-n", self.switch, "link", "set", self.port(index), "master", "br1")

    def join(self, indexes: Sequence[int]) -> None:
        """Move the hosts *indexes* back to the main bridge."""
        for index in indexes:
            _ip("-n", self.switch, "link", "set", self.port(index), "master", "br0")

    def close(self) -> None:
        """Delete every namespace made (the bridge and veths go with them); safe to call twice."""
        errors = []
        while self._made:
            name = self._made.pop()
            result = _ip("netns", "del", name, check=False)
            if result.returncode != 0 and "No such file" not in result.stderr:
                errors.append(f"{name}: {result.stderr.strip()}")
        if errors:
            raise RuntimeError("could not delete network namespaces: " + "; ".join(errors))
