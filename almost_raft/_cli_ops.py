"""The operator options of ``python -m almost_raft``: ``--exec``, ``--status-listen`` and the URLs.

``_cli`` parses the rest and calls in here: ``add_arguments`` and
``check_arguments`` while parsing, ``run`` to run a node that has any of
these options (through ``node.serve_node``, which ``run_node`` shares).
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._exec import ON_EXIT_CHOICES, ChildEvent, ExecRunner, OnExit, check_kill_after, default_kill_after
from ._messages import NodeId
from ._state import RaftElectionState
from ._storage import FileStorage
from .node import NodeConfig, NodeStartError, serve_node
from .transports.tcp import TcpStats

if TYPE_CHECKING:
    from ._cli import Options, _Printer

EXIT_USAGE = 2


@dataclass(frozen=True, slots=True)
class OpsOptions:
    """The checked operator options (``Options.ops``)."""

    exec_command: tuple[str, ...] = ()
    kill_after: float = 0.0
    stop_timeout: float = 10.0
    on_exit: OnExit = "restart"
    status_listen: tuple[str, int] | None = None
    health_leader_age: float | None = None
    advertise_url: str | None = None
    peer_urls: tuple[tuple[str, str], ...] = ()

    @property
    def wanted(self) -> bool:
        """Whether any of them is used (then ``run`` runs the node)."""
        return bool(self.exec_command) or self.status_listen is not None


def split_exec(argv: Sequence[str]) -> tuple[list[str], tuple[str, ...] | None]:
    """Split ``... --exec -- COMMAND ARGS`` into the node's arguments and the command (``None``: no ``--exec``)."""
    args = list(argv)
    if "--exec" not in args:
        return args, None
    at = args.index("--exec")
    command = args[at + 1 :]
    if command[:1] == ["--"]:
        command = command[1:]
    return [*args[:at], "--exec"], tuple(command)


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")) or len(text.split("://", 1)[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text.rstrip("/")


def _peer_url(text: str) -> tuple[str, str]:
    node_id, sep, url = text.partition("=")
    if not sep or not node_id:
        raise argparse.ArgumentTypeError(f"{text!r} is not ID=URL")
    return node_id, _url(url)


def add_arguments(parser: argparse.ArgumentParser, seconds: type[float] | object, address: object) -> None:
    """Add the operator options to *parser* (*seconds* and *address* are ``_cli``'s argument types)."""
    ops = parser.add_argument_group("run a command only on the leader")
    ops.add_argument(
        "--exec",
        action="store_true",
        dest="exec_flag",
        help="-- COMMAND [ARGS...] (last): run COMMAND only while this node holds the lease; "
        "its environment has ALMOST_RAFT_TERM (the fencing token), ALMOST_RAFT_NODE_ID, ALMOST_RAFT_LEADER=1",
    )
    ops.add_argument(
        "--kill-after",
        type=seconds,  # type: ignore[arg-type]
        default=None,
        metavar="S",
        help="when the lease is lost: SIGTERM to the child's process group S seconds before the lease ends, "
        "SIGKILL when it ends (default T/4)",
    )
    ops.add_argument(
        "--stop-timeout",
        type=seconds,  # type: ignore[arg-type]
        default=10.0,
        metavar="S",
        help="on a planned stop (SIGTERM to the node, SIGUSR1): SIGKILL S seconds after SIGTERM, while the lease "
        "is kept (default 10)",
    )
    ops.add_argument(
        "--on-exit",
        choices=ON_EXIT_CHOICES,
        default="restart",
        help="when the child exits by itself: restart it (with backoff) while leading, hand leadership over "
        "(resign), or keep leading without it (stay); default restart",
    )
    status = parser.add_argument_group("health and metrics (needs: pip install 'almost_raft[server]')")
    status.add_argument(
        "--status-listen",
        type=address,  # type: ignore[arg-type]
        metavar="HOST:PORT",
        help="serve /healthz, /readyz, /leader, /status and /metrics (Prometheus) here",
    )
    status.add_argument(
        "--health-leader-age",
        type=seconds,  # type: ignore[arg-type]
        default=None,
        metavar="S",
        help="/healthz fails when no leader was heard for S seconds (default 10 T)",
    )
    status.add_argument("--advertise-url", type=_url, metavar="URL", help="this node's URL, reported by /leader")
    status.add_argument(
        "--peer-url",
        action="append",
        default=[],
        type=_peer_url,
        dest="peer_urls",
        metavar="ID=URL",
        help="a peer's advertised URL (repeat for each peer)",
    )


def check_arguments(
    parser: argparse.ArgumentParser,
    ns: argparse.Namespace,
    command: tuple[str, ...] | None,
    *,
    election_timeout: float,
    heartbeat_interval: float,
) -> OpsOptions:
    """Check the operator options (exits 2 with a one-line message when they are wrong)."""
    if ns.exec_flag and command is None:  # pragma: no cover - split_exec always finds it
        parser.error("--exec needs a command: --exec -- COMMAND [ARGS...]")
    if command is not None:
        if not command:
            parser.error("--exec needs a command: --exec -- COMMAND [ARGS...]")
        program = command[0]
        found = shutil.which(program) if os.sep not in program else (program if os.access(program, os.X_OK) else None)
        if found is None:
            parser.error(f"--exec: command not found or not executable: {program!r}")
    elif ns.kill_after is not None or ns.on_exit != "restart":
        parser.error("--kill-after and --on-exit need --exec -- COMMAND")
    kill_after: float = ns.kill_after if ns.kill_after is not None else default_kill_after(election_timeout)
    problem = check_kill_after(kill_after, election_timeout, heartbeat_interval)
    if command is not None and problem is not None:
        parser.error(problem)
    peer_ids = {peer_id for peer_id, _, _ in ns.peers}
    for peer_id, _ in ns.peer_urls:
        if peer_id not in peer_ids:
            parser.error(f"--peer-url {peer_id}=...: no --peer {peer_id}=HOST:PORT")
    return OpsOptions(
        exec_command=command or (),
        kill_after=kill_after,
        stop_timeout=ns.stop_timeout,
        on_exit=ns.on_exit,
        status_listen=ns.status_listen,
        health_leader_age=ns.health_leader_age,
        advertise_url=ns.advertise_url,
        peer_urls=tuple(ns.peer_urls),
    )


def _error(text: str) -> int:
    print(f"almost_raft: error: {text}", file=sys.stderr)
    return EXIT_USAGE


async def run(opts: Options, printer: _Printer) -> int:
    """Run the node *opts* describes, with ``--exec`` and/or ``--status-listen``; return the exit status.

    Errors and exit statuses are those of the plain node (see ``_cli.EXIT_CODES``): 2 when it cannot
    start, 3 when a save fails while it runs, 1 when the ``--exec`` supervisor goes away.
    """
    from ._cli import EXIT_STORAGE, _load_tls, _report_failed_save, _WatchedStorage

    server_ctx: ssl.SSLContext | None = None
    client_ctx: ssl.SSLContext | None = None
    if opts.tls_cert and opts.tls_key and opts.tls_ca:
        try:
            server_ctx, client_ctx = _load_tls(opts.tls_cert, opts.tls_key, opts.tls_ca)
        except ValueError as exc:
            return _error(str(exc))
    ops = opts.ops
    urls: dict[NodeId, str] = dict(ops.peer_urls)
    if ops.advertise_url is not None:
        urls[opts.node_id] = ops.advertise_url
    storage = _WatchedStorage(FileStorage(opts.storage)) if opts.storage else None
    cfg = NodeConfig(
        node_id=opts.node_id,
        listen=opts.listen,
        peers=opts.peers,
        election_timeout=opts.election_timeout,
        election_timeout_max=opts.election_timeout_max,
        heartbeat_interval=opts.heartbeat_interval,
        message_timeout=opts.message_timeout,
        min_nodes=opts.min_nodes,
        max_nodes=opts.max_nodes,
        storage=storage,
        server_ssl_context=server_ctx,
        client_ssl_context=client_ctx,
        seed=opts.seed,
        status_listen=ops.status_listen,
        urls=urls,
        health_leader_age=ops.health_leader_age,
    )
    me = opts.node_id
    runner: ExecRunner | None = None

    def child_event(event: ChildEvent) -> None:
        record: dict[str, object] = {
            "event": "child",
            "node": me,
            "what": event.what,
            "run": event.run,
            "term": event.term,
            "pid": event.pid,
            "monotonic": event.at,
        }
        if event.what == "exited":
            record.update(code=event.code, by=event.by)
            text = f"{me}: child {event.pid} (term {event.term}) exited with {event.code} ({event.by})"
        elif event.what == "signalled":
            record.update(signal=event.signal, why=event.detail)
            text = f"{me}: {event.signal} to child {event.pid} (term {event.term}, {event.detail})"
        elif event.what == "refused":
            record.update(why=event.detail)
            text = f"{me}: child not started (term {event.term}): {event.detail}"
        else:
            text = f"{me}: child {event.pid} started (term {event.term})"
        printer.write(record, text)

    def stopped(state: RaftElectionState, stats: TcpStats) -> None:
        failure: str | None = None
        reason = "stopped"
        if storage is not None and storage.failed is not None:
            failure, reason = _report_failed_save(me, storage), "storage_failed"
        elif runner is not None and runner.failed.is_set():
            failure, reason = "the --exec supervisor went away", "supervisor_lost"
        status = state.status().as_dict()
        record: dict[str, object] = {
            "event": "stopped",
            "node": me,
            "term": state.term,
            "leader_id": None,
            "monotonic": time.monotonic(),
            "reason": reason,
            "error": failure,
            "status": status,
            "transport": stats.as_dict(),
        }
        if runner is not None:
            record["child"] = runner.stats()
        printer.write(record, f"{me}: stopped at term {status['term']}" + (f": {failure}" if failure else ""))

    try:
        if not ops.exec_command:
            return await serve_node(cfg, None, on_change=printer.change, on_stopped=stopped)
        runner = ExecRunner(
            ops.exec_command,
            node_id=me,
            election_timeout=opts.election_timeout,
            kill_after=ops.kill_after,
            stop_timeout=ops.stop_timeout,
            on_exit=ops.on_exit,
            on_event=child_event,
        )
        try:
            await runner.__aenter__()
        except (OSError, RuntimeError) as exc:
            return _error(f"cannot start the --exec supervisor: {exc}")
        try:
            return await serve_node(cfg, runner.work, exec_runner=runner, on_change=printer.change, on_stopped=stopped)
        finally:
            await runner.__aexit__(None, None, None)
    except NodeStartError as exc:
        return _error(str(exc))
    except BaseException:
        # A save that failed ends the election (it never votes without durable state); the
        # child was stopped first, the stopped line names the file: no traceback.
        if storage is not None and storage.failed is not None:
            return EXIT_STORAGE
        raise
