"""``python -m almost_raft``: run one node of a cluster over TCP.

Example, one line per terminal::

    python -m almost_raft --id a --listen 127.0.0.1:7001 --peer b=127.0.0.1:7002 --peer c=127.0.0.1:7003
    python -m almost_raft --id b --listen 127.0.0.1:7002 --peer a=127.0.0.1:7001 --peer c=127.0.0.1:7003
    python -m almost_raft --id c --listen 127.0.0.1:7003 --peer a=127.0.0.1:7001 --peer b=127.0.0.1:7002

Each leader change is printed on stdout (one JSON object per line with
``--json``).  SIGTERM or Ctrl-C stops the node; a leader first hands
leadership over.  SIGUSR1 asks a leader to hand leadership over and go on as
a follower.

Every error is one line on stderr with a documented exit status (``EXIT_CODES``,
shown by ``--help``): 2 for anything that keeps the node from starting, 3 when
the term or vote cannot be saved while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import ipaddress
import json
import logging
import os
import random
import re
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn, TextIO

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from ._cli_ops import OpsOptions, add_arguments, check_arguments, split_exec
from ._cli_ops import run as run_ops
from ._config import make_config
from ._driver import raft_election
from ._errors import leaf_exceptions
from ._messages import ControlMessage, LeaderChanged, Message, NodeId, RemoveNode, TransferLeadership
from ._protocols import HardState
from ._state import RaftElectionState
from ._storage import FileStorage
from .transports.tcp import TcpTransport, make_tls_contexts

logger = logging.getLogger("almost_raft")

# The options of make_config that the command line names --like-this.
_OPTION_NAMES = re.compile(
    r"\b(election_timeout_max|election_timeout|heartbeat_interval|message_timeout|min_nodes|max_nodes)\b"
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_STORAGE = 3

USAGE = "python -m almost_raft --id ID --listen HOST:PORT [--peer ID=HOST:PORT ...] [options]"

EXIT_CODES = f"""\
exit status:
  {EXIT_OK}    stopped normally (SIGTERM, Ctrl-C)
  {EXIT_FAILURE}    an unexpected error (a bug: please report it with the traceback)
  {EXIT_USAGE}    could not start: bad arguments, a storage file that cannot be read or written,
       an address that cannot be listened on, TLS files that cannot be loaded (one line on stderr)
  {EXIT_STORAGE}    the term or vote could not be saved while running (full disk, read-only file
       system, ...): the node stopped before sending anything that depended on it
  130  interrupted before the node started
"""


@dataclass(frozen=True, slots=True)
class Options:
    """The checked command line."""

    node_id: str
    listen: tuple[str, int]
    peers: tuple[tuple[str, str, int], ...]
    election_timeout: float
    election_timeout_max: float | None
    heartbeat_interval: float
    message_timeout: float
    min_nodes: int
    max_nodes: int
    storage: str | None
    tls_cert: str | None
    tls_key: str | None
    tls_ca: str | None
    json: bool
    backend: str
    seed: int | None
    log_level: str
    ops: OpsOptions = field(default_factory=OpsOptions)  # --exec, --status-listen, ... (_cli_ops)


def parse_address(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[IPv6]:PORT`` for IPv6) into ``(host, port)``.

    Raises:
        ValueError: with a message naming what is wrong.
    """
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not [IPV6]:PORT")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [::1]:7001")
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} in {text!r} is not a number")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} in {text!r} is outside 0..65535")
    return host, port


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _peer(text: str) -> tuple[str, str, int]:
    node_id, sep, address = text.partition("=")
    if not sep or not node_id:
        raise argparse.ArgumentTypeError(f"{text!r} is not ID=HOST:PORT")
    host, port = _address(address)
    if port == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a peer's port cannot be 0")
    return node_id, host, port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are the one usage line and the error, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"usage: {self.usage}\n{self.prog}: error: {message}\n")


def _fail_at_start(message: str) -> int:
    """Print a one-line error about the start of the node; return the exit status for it."""
    print(f"almost_raft: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m almost_raft``."""
    parser = _Parser(
        prog="python -m almost_raft",
        usage=USAGE,
        description="Run one almost_raft node over TCP and print each leader change. "
        "SIGTERM or Ctrl-C stops it (a leader hands over first); SIGUSR1 makes a leader hand over.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--id", required=True, dest="node_id", help="this node's id")
    parser.add_argument("--listen", required=True, type=_address, metavar="HOST:PORT", help="address to listen on")
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        type=_peer,
        dest="peers",
        metavar="ID=HOST:PORT",
        help="a peer and its listen address (repeat for each peer)",
    )
    timing = parser.add_argument_group("timing (seconds)")
    timing.add_argument("--election-timeout", type=_seconds, default=0.15, help="T: lower end of the election timeout")
    timing.add_argument(
        "--election-timeout-max", type=_seconds, default=None, help="upper end of the election timeout (default 2T)"
    )
    timing.add_argument(
        "--heartbeat-interval", type=_seconds, default=None, help="between a leader's heartbeats (default T/3)"
    )
    timing.add_argument(
        "--message-timeout", type=_seconds, default=None, help="bound on each send (default: the heartbeat interval)"
    )
    parser.add_argument(
        "--min-nodes", type=_count, default=None, help="no election below this cluster size (default: all nodes)"
    )
    parser.add_argument("--max-nodes", type=_count, default=1024, help="the cluster never grows beyond this")
    parser.add_argument("--storage", metavar="PATH", help="file keeping term and vote across restarts")
    tls = parser.add_argument_group("mutual TLS (all three, or none)")
    tls.add_argument("--tls-cert", metavar="PEM", help="this node's certificate, naming its id (CN or DNS SAN)")
    tls.add_argument("--tls-key", metavar="PEM", help="its private key")
    tls.add_argument("--tls-ca", metavar="PEM", help="the CA that signs every node's certificate")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop (default asyncio)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed the election timer randomness")
    parser.add_argument(
        "--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="stderr log level"
    )
    add_arguments(parser, _seconds, _address)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse and check the command line; exit with status 2 and a clear message when it is wrong."""
    parser = build_parser()
    args, command = split_exec(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(args)
    node_id: str = ns.node_id
    if not node_id:
        parser.error("--id must not be empty")
    seen: set[str] = set()
    for peer_id, _, _ in ns.peers:
        if peer_id == node_id:
            parser.error(f"--peer {peer_id}=...: a node cannot be its own peer (--id {node_id})")
        if peer_id in seen:
            parser.error(f"--peer {peer_id}=... is given twice: duplicate node id {peer_id!r}")
        seen.add(peer_id)
    size = len(ns.peers) + 1
    min_nodes: int = ns.min_nodes if ns.min_nodes is not None else size
    max_nodes: int = max(ns.max_nodes, size) if ns.max_nodes == 1024 else ns.max_nodes
    if size > max_nodes:
        parser.error(f"{size} nodes exceed --max-nodes {max_nodes}")
    if min_nodes > max_nodes:
        parser.error(f"--min-nodes ({min_nodes}) exceeds --max-nodes ({max_nodes})")
    # The same checks and defaults as RaftElectionState.init (heartbeat T/3,
    # message timeout = heartbeat).  Its unit warning comes from init, once
    # logging is set up.
    try:
        config = make_config(
            node_id,
            election_timeout=ns.election_timeout,
            election_timeout_max=ns.election_timeout_max,
            heartbeat_interval=ns.heartbeat_interval,
            message_timeout=ns.message_timeout,
            min_nodes=min_nodes,
            max_nodes=max_nodes,
            peer_ids=[peer_id for peer_id, _, _ in ns.peers],
            warn=False,
        )
    except ValueError as exc:
        parser.error(_OPTION_NAMES.sub(lambda m: "--" + m.group(0).replace("_", "-"), str(exc)))
    assert config.message_timeout is not None
    tls = (ns.tls_cert, ns.tls_key, ns.tls_ca)
    if any(tls) and not all(tls):
        parser.error("TLS needs all of --tls-cert, --tls-key and --tls-ca")
    if ns.backend == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            parser.error("--backend trio needs the trio package (pip install trio)")
    return Options(
        node_id=node_id,
        listen=ns.listen,
        peers=tuple(ns.peers),
        election_timeout=config.election_timeout,
        election_timeout_max=ns.election_timeout_max,
        heartbeat_interval=config.heartbeat_interval,
        message_timeout=config.message_timeout,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        storage=ns.storage,
        tls_cert=ns.tls_cert,
        tls_key=ns.tls_key,
        tls_ca=ns.tls_ca,
        json=ns.json,
        backend=ns.backend,
        seed=ns.seed,
        log_level=ns.log_level,
        ops=check_arguments(
            parser, ns, command, election_timeout=config.election_timeout, heartbeat_interval=config.heartbeat_interval
        ),
    )


class _Printer:
    """Writes the leader changes and the final line, flushed at once."""

    def __init__(self, opts: Options, out: TextIO) -> None:
        self._opts = opts
        self._out = out

    def write(self, record: dict[str, object], text: str) -> None:
        self._out.write((json.dumps(record) if self._opts.json else text) + "\n")
        self._out.flush()

    def change(self, event: LeaderChanged) -> None:
        now = time.monotonic()
        me = self._opts.node_id
        leader = event.leader_id
        record: dict[str, object] = {
            "event": "leader",
            "node": me,
            "term": event.term,
            "leader_id": leader,
            "monotonic": now,
        }
        if leader is None:
            text = f"{me}: term {event.term}, no leader"
        elif leader == me:
            text = f"{me}: term {event.term}, leader is {leader} (this node)"
        else:
            text = f"{me}: term {event.term}, leader is {leader}"
        self.write(record, text)


async def _watch_signals(
    control: MemoryObjectSendStream[ControlMessage | Message],
    self_id: NodeId,
    cancel_scope: anyio.CancelScope,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    stopping = False
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
        task_status.started()
        async for signum in signals:
            try:
                if signum == signal.SIGUSR1:
                    logger.info("node %r: SIGUSR1, handing leadership over", self_id)
                    control.send_nowait(TransferLeadership())
                elif not stopping:
                    stopping = True
                    logger.info(
                        "node %r: %s, stopping (a leader hands over first)", self_id, signal.Signals(signum).name
                    )
                    control.send_nowait(RemoveNode(self_id))
                else:
                    logger.warning("node %r: second %s, stopping at once", self_id, signal.Signals(signum).name)
                    cancel_scope.cancel()
                    return
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                cancel_scope.cancel()
                return


class _WatchedStorage:
    """A ``FileStorage`` that remembers a save that failed, so the CLI can report it as what it is."""

    __slots__ = ("failed", "inner")

    def __init__(self, inner: FileStorage) -> None:
        self.inner = inner
        self.failed: tuple[HardState, OSError] | None = None

    def __repr__(self) -> str:
        return repr(self.inner)

    async def load(self) -> HardState | None:
        return await self.inner.load()

    async def save(self, hard_state: HardState) -> None:
        try:
            await self.inner.save(hard_state)
        except OSError as exc:
            self.failed = (hard_state, exc)
            raise


def _start_failure(exc: BaseException) -> ValueError | OSError | None:
    """The storage error that *exc* is (or wraps alone), or ``None`` for anything else."""
    leaves = leaf_exceptions(exc)
    if len(leaves) == 1 and isinstance(leaves[0], (ValueError, OSError)):
        return leaves[0]
    return None


def _report_failed_save(node_id: str, storage: _WatchedStorage) -> str:
    """Log the one ERROR line about a failed save; return the reason for the ``stopped`` line."""
    assert storage.failed is not None
    hard_state, exc = storage.failed
    code = errno.errorcode.get(exc.errno or 0, "no errno")
    reason = f"cannot save the state to {storage.inner.path}: [Errno {exc.errno} {code}] {exc.strerror or exc}"
    logger.error(
        "node %r term %d: %s; stopped before sending anything that depends on it", node_id, hard_state.term, reason
    )
    return reason


def _yield_cpu() -> None:
    """The election has ended (a leader's TimeoutNow is written): give the CPU to the peers taking over.

    What is left (flushing, the last line, the interpreter's exit) takes a
    few milliseconds of CPU at the very moment the peers elect the next
    leader; on a busy machine it delays them.  At the lowest priority it
    runs when they are done (``benchmarks/failover_tcp.py --measure sigterm``).
    """
    with contextlib.suppress(AttributeError, OSError):  # no os.nice on Windows
        os.nice(19)


def _load_tls(cert: str, key: str, ca: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """``make_tls_contexts``, with an error that names the file at fault.

    Raises:
        ValueError: a file cannot be read, or the files are not a certificate, its key and a CA.
    """
    files = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    for flag, path in files.items():
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
    try:
        return make_tls_contexts(cert, key, ca)
    except (OSError, ssl.SSLError) as exc:
        given = ", ".join(f"{flag} {path}" for flag, path in files.items())
        raise ValueError(f"cannot load the TLS files ({given}): {exc}") from None


async def run_node(opts: Options, out: TextIO = sys.stdout, *, own_process: bool = False) -> int:
    """Run the node described by *opts* until it is stopped; return the exit status.

    *own_process*: the process is this node's alone (``main``): once the
    election has ended it lowers its CPU priority for the rest of its exit.
    """
    printer = _Printer(opts, out)
    if opts.ops.wanted:
        return await run_ops(opts, printer)
    server_ctx: ssl.SSLContext | None = None
    client_ctx: ssl.SSLContext | None = None
    if opts.tls_cert and opts.tls_key and opts.tls_ca:
        try:
            server_ctx, client_ctx = _load_tls(opts.tls_cert, opts.tls_key, opts.tls_ca)
        except ValueError as exc:
            return _fail_at_start(str(exc))
    storage = _WatchedStorage(FileStorage(opts.storage)) if opts.storage else None
    transport = TcpTransport(
        opts.node_id,
        server_ssl_context=server_ctx,
        client_ssl_context=client_ctx,
        flush_timeout=max(opts.message_timeout, 0.1),
        election_timeout=opts.election_timeout,
    )
    failure: str | None = None
    async with transport:
        nodes = [transport.node(peer_id, host, port) for peer_id, host, port in opts.peers]
        try:
            state, control = RaftElectionState.init(
                opts.node_id,
                election_timeout=opts.election_timeout,
                election_timeout_max=opts.election_timeout_max,
                heartbeat_interval=opts.heartbeat_interval,
                message_timeout=opts.message_timeout,
                nodes=nodes,
                min_nodes=opts.min_nodes,
                max_nodes=opts.max_nodes,
                storage=storage,
                rng=random.Random(opts.seed),
            )
        except (TypeError, ValueError) as exc:
            return _fail_at_start(str(exc))
        async with control:
            host, port = opts.listen
            try:
                await transport.listen(host, port, control)
            except OSError as exc:
                return _fail_at_start(f"cannot listen on {host}:{port}: {exc}")
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(_watch_signals, control, opts.node_id, tg.cancel_scope)
                    try:
                        await tg.start(raft_election, state)
                    except BaseException as exc:
                        # raft_election raises the load error itself; a group is unwrapped too.
                        error = _start_failure(exc)
                        if error is None:
                            raise
                        tg.cancel_scope.cancel()
                        return _fail_at_start(f"--storage: {error}")
                    # The first line is the view at start (the saved term, no leader yet).
                    with state.subscribe(buffer=256) as events:
                        async for event in events:
                            printer.change(event)
                    if own_process:
                        _yield_cpu()
                    tg.cancel_scope.cancel()
            except BaseException:
                # A save that failed ends the election (it never votes without
                # durable state): one ERROR line and the stopped line, no traceback.
                if storage is None or storage.failed is None:
                    raise
                failure = _report_failed_save(opts.node_id, storage)
    status = state.status().as_dict()
    stats = transport.stats().as_dict()
    printer.write(
        {
            "event": "stopped",
            "node": opts.node_id,
            "term": state.term,
            "leader_id": None,
            "monotonic": time.monotonic(),
            "reason": "storage_failed" if failure else "stopped",
            "error": failure,
            "status": status,
            "transport": stats,
        },
        f"{opts.node_id}: stopped at term {status['term']}" + (f": {failure}" if failure else ""),
    )
    return EXIT_STORAGE if failure else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m almost_raft``; returns the exit status."""
    opts = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, opts.log_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not opts.peers:
        if opts.min_nodes <= 1:
            why = "it is a cluster of one and leads alone"
        else:
            why = f"with --min-nodes {opts.min_nodes} it can never elect a leader"
        print(
            f"almost_raft: warning: no --peer given: {why} (give --peer ID=HOST:PORT for each other node)",
            file=sys.stderr,
        )
    try:
        return anyio.run(functools.partial(run_node, opts, own_process=True), backend=opts.backend)
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        return 130
