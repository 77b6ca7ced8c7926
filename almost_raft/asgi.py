"""``LeaderOnly``: a pure-ASGI middleware that lets chosen routes through only on the lease holder.

Wrap any ASGI application (no framework needed) running in the same process
as a node::

    app = LeaderOnly(my_app, state, urls={"a": "http://10.0.0.1:8000", "b": ..., "c": ...},
                     prefixes=["/jobs"], methods=["POST", "PUT", "DELETE"])

A guarded request is passed to ``my_app`` only while this node holds the
leader's lease.  Elsewhere it is answered at once:

* ``307 Temporary Redirect`` to the same path and query on the leader's URL,
  when this node is a follower that heard from its leader within ``T`` (so
  the leader may still hold its lease) and that leader's URL is known.  307
  keeps the method and the body, so a client that follows redirects ends at
  the leader.
* ``503 Service Unavailable`` with ``Retry-After`` otherwise: an election is
  going on, this node was cut off, or it still leads but lost its lease.

Both carry ``x-almost-raft-leader`` (the leader's id, when one is known) and
``x-almost-raft-term``, and a small JSON body saying why.  A request passed
through carries the fencing token in its scope: ``scope["almost_raft"]`` is
``{"term": ..., "leader_id": ...}``; pass the term to what the handler writes
to.  The check is made when the request arrives: a handler still running when
the lease ends is not interrupted, so check ``state.holds_lease`` (and use the
term) before each side effect.

Where the URLs come from: each node's advertised URL is configuration, given
to every replica alike (``urls``; ``--peer-url ID=URL`` on the command line),
not carried in heartbeats.  That needs no change to the wire format or to the
messages, the URL of a leader is known to the followers as soon as its id is,
and a node cannot redirect clients to an address the operator did not list.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import TypeAlias, final

from ._messages import NodeId, Role
from ._state import RaftElectionState

__all__ = ("ASGIApp", "LeaderOnly", "Receive", "Scope", "Send")

Scope: TypeAlias = MutableMapping[str, object]
"""An ASGI connection scope."""
ASGIMessage: TypeAlias = MutableMapping[str, object]
Receive: TypeAlias = Callable[[], Awaitable[ASGIMessage]]
"""The ASGI ``receive`` callable."""
Send: TypeAlias = Callable[[ASGIMessage], Awaitable[None]]
"""The ASGI ``send`` callable."""
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""


async def send_response(
    send: Send, status: int, body: bytes, *, content_type: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Send a whole HTTP response through ASGI *send*."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@final
class LeaderOnly:
    """Pass chosen routes to *app* only on the node that holds the leader's lease.

    Args:
        app: the ASGI application to protect.
        state: this node's state (its election runs in the same process and
            event loop).
        urls: each node's advertised base URL, by node id (this node's may be
            included); the redirect goes to ``urls[leader] + path + query``.
        prefixes: the guarded paths: a path equal to a prefix, or under it
            (``"/jobs"`` guards ``/jobs`` and ``/jobs/1``; ``"/"`` guards all).
        methods: only these methods are guarded (``None``: all).
        retry_after: seconds for ``Retry-After`` on a 503.
        leader_max_age: a follower redirects only if it heard from its
            leader within this many seconds (default: the election timeout).

    Other requests, websockets and lifespan events pass through unchanged.
    """

    def __init__(
        self,
        app: ASGIApp,
        state: RaftElectionState,
        *,
        urls: Mapping[NodeId, str],
        prefixes: Iterable[str] = ("/",),
        methods: Iterable[str] | None = None,
        retry_after: int = 1,
        leader_max_age: float | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.urls = {key: url.rstrip("/") for key, url in urls.items()}
        self.prefixes = tuple(p.rstrip("/") for p in prefixes)
        self.methods = None if methods is None else frozenset(m.upper() for m in methods)
        if type(retry_after) is not int or retry_after < 0:
            raise ValueError(f"retry_after must be a whole number of seconds >= 0, got {retry_after!r}")
        self.retry_after = retry_after
        self.leader_max_age = leader_max_age if leader_max_age is not None else state.config.election_timeout

    def guards(self, path: str, method: str) -> bool:
        """Whether a request for *path* with *method* is leader-only."""
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return any(p == "" or path == p or path.startswith(p + "/") for p in self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        method = scope.get("method")
        if scope.get("type") != "http" or not isinstance(path, str) or not isinstance(method, str):
            await self.app(scope, receive, send)
            return
        if not self.guards(path, method):
            await self.app(scope, receive, send)
            return
        state = self.state
        term = state.term
        if state.holds_lease:
            inner = dict(scope)
            inner["almost_raft"] = {"term": term, "leader_id": state.self_id}
            await self.app(inner, receive, send)
            return
        leader = state.leader_id
        headers = [(b"x-almost-raft-term", str(term).encode())]
        if leader is not None:
            headers.append((b"x-almost-raft-leader", str(leader).encode()))
        url = self.urls.get(leader) if leader is not None else None
        if url is not None and leader != state.self_id and self._leader_is_fresh():
            location = url + self._target(scope, path)
            body = json.dumps({"error": "not the leader", "leader_id": leader, "term": term, "location": location})
            await send_response(
                send,
                307,
                body.encode(),
                content_type=b"application/json",
                headers=[*headers, (b"location", location.encode())],
            )
            return
        if leader is None:
            why = "no leader is known: an election is going on"
        elif leader == state.self_id:
            why = "this node leads but does not hold its lease now"
        elif url is None:
            why = f"the leader {leader!r} has no known URL"
        else:
            why = f"the leader {leader!r} has not been heard from lately"
        body = json.dumps({"error": why, "leader_id": leader, "term": term})
        await send_response(
            send,
            503,
            body.encode(),
            content_type=b"application/json",
            headers=[*headers, (b"retry-after", str(self.retry_after).encode())],
        )

    def _leader_is_fresh(self) -> bool:
        status = self.state.status()
        if status.role is not Role.FOLLOWER:
            return False
        age = status.leader_contact_age
        return age is not None and age <= self.leader_max_age

    @staticmethod
    def _target(scope: Scope, path: str) -> str:
        raw = scope.get("raw_path")
        target = raw.decode("latin-1") if isinstance(raw, bytes) and raw else path
        query = scope.get("query_string")
        if isinstance(query, bytes) and query:
            target += "?" + query.decode("latin-1")
        return target
