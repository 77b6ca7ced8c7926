"""The listener's book of incoming connections: limits, eviction, and rate-limited logs.

A listener has a fixed number of connection slots (``max_connections``) and
must keep them for its peers, whatever else reaches its port.  Every accepted
connection is an ``Incoming`` in the ``ConnectionTable``, which remembers
where it came from and when it last did something useful: carry a valid frame
from a known peer (until then, when it was accepted).

A new connection is admitted when its address has fewer than
``per_address`` connections and the listener fewer than ``total``.  When a
limit is reached, the least recently useful connection in that scope is
evicted to make room, provided it is *evictable*: it has never carried a
valid frame, or not for ``protect`` seconds.  A live peer's connection carries
a frame every heartbeat interval while it leads or follows the leader, so it
is never evicted; connections that only hold a slot are, oldest first.  When
nothing is evictable, the newcomer is refused.

Addresses are counted per IPv4 address and per IPv6 /64 (one host usually has
a whole /64 to choose from).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from typing import Final, final

import anyio

logger = logging.getLogger("almost_raft")

_IPV6_HOST_PREFIX: Final = 64


def address_key(host: str) -> str:
    """The key one host's connections are counted under: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, _IPV6_HOST_PREFIX), strict=False))
    return str(ip)


@final
class Incoming:
    """One accepted connection, as the table sees it.

    Attributes:
        key: its address key (``address_key``).
        remote: the peer address, for logs.
        useful_at: when it was accepted, then when it last carried a valid frame from a known peer.
        useful: whether it has carried such a frame.
        scope: cancelled to evict it (set by the listener).
        pending: bytes of an unfinished frame received so far (for logs).
    """

    __slots__ = ("key", "pending", "remote", "scope", "useful", "useful_at")

    def __init__(self, key: str, remote: str, now: float, scope: anyio.CancelScope | None = None) -> None:
        self.key = key
        self.remote = remote
        self.useful_at = now
        self.useful = False
        self.pending = 0
        self.scope = scope


@final
class ConnectionTable:
    """The open incoming connections of one listener, counted per address and in total.

    Args:
        total: at most this many open at once.
        per_address: at most this many from one address key.
        protect: a connection that carried a valid frame less than this long ago is never evicted.
    """

    __slots__ = ("_all", "_by_key", "per_address", "protect", "total")

    def __init__(self, total: int, per_address: int, protect: float) -> None:
        self.total = total
        self.per_address = per_address
        self.protect = protect
        self._all: set[Incoming] = set()
        self._by_key: dict[str, set[Incoming]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def count(self, key: str) -> int:
        """Open connections from *key*."""
        return len(self._by_key.get(key, ()))

    def admit(self, conn: Incoming, now: float) -> tuple[bool, list[Incoming]]:
        """Make room for *conn* and add it.

        Returns:
            ``(admitted, evicted)``: whether *conn* was added, and the
            connections removed (their scopes cancelled) to make room.
        """
        evicted: list[Incoming] = []
        for pool, limit in ((self._by_key.get(conn.key, set()), self.per_address), (self._all, self.total)):
            if len(pool) >= limit:
                victim = self._least_useful(pool, now)
                if victim is None:
                    return False, evicted
                self.remove(victim)
                if victim.scope is not None:
                    victim.scope.cancel()
                evicted.append(victim)
        self._all.add(conn)
        self._by_key.setdefault(conn.key, set()).add(conn)
        return True, evicted

    def _least_useful(self, pool: set[Incoming], now: float) -> Incoming | None:
        best: Incoming | None = None
        for conn in pool:
            if conn.useful and now - conn.useful_at < self.protect:
                continue
            if best is None or conn.useful_at < best.useful_at:
                best = conn
        return best

    def remove(self, conn: Incoming) -> None:
        """Forget *conn* (if still there)."""
        if conn in self._all:
            self._all.discard(conn)
            same = self._by_key[conn.key]
            same.discard(conn)
            if not same:
                del self._by_key[conn.key]


class RateLimitedLog:
    """Logs a recurring inbound problem at most once per interval, with the count of the others.

    The others go to DEBUG, so that nothing an attacker sends can flood the log.
    """

    __slots__ = ("_interval", "_next_at", "_suppressed")

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._next_at = -math.inf
        self._suppressed = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            logger.debug(msg, *args)
            return
        if self._suppressed:
            msg += " (and %d more since the last report)"
            args = (*args, self._suppressed)
        self._suppressed = 0
        self._next_at = now + self._interval
        logger.warning(msg, *args)
